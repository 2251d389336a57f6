import sys

from keras_sam.study.cli import main

sys.exit(main())

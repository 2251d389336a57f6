import sys

from keras_sam.cli import main

sys.exit(main())

"""SAM vs SGD on the synthetic teacher-student workload (no download).

python examples/synthetic.py --hidden 1024 --rho 0.05 --epochs 30
"""

from keras_sam.cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["demo", *sys.argv[1:]]))

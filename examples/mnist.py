"""MNIST, LeNet-300-100 with width factor p, SGD vs SAM (paper: Section 4).

python examples/mnist.py --width 4 --optimizer sam --rho 0.2 --epochs 100
python examples/mnist.py --width 1 --optimizer sgd --strategy mirrored
"""

import _common


def main(argv=None) -> dict:
    args = _common.parser(
        __doc__, "width", float, 1.0, "p: hidden [300p, 100p]"
    ).parse_args(argv)
    return _common.train(args, "mnist")


if __name__ == "__main__":
    main()

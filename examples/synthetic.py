"""Synthetic teacher-student regression, student width h, SGD vs SAM (no download).

python examples/synthetic.py --hidden 1000 --optimizer sam --rho 0.05 --epochs 30
(`keras-sam sweep synthetic` runs the whole size x rho x seed study.)
"""

import _common


def main(argv=None) -> dict:
    args = _common.parser(
        __doc__, "hidden", int, 1000, "student hidden width"
    ).parse_args(argv)
    return _common.train(args, "synthetic")


if __name__ == "__main__":
    main()

"""CIFAR-10, ResNet-18 with base filters 2^k, SGD vs SAM (paper: Section 4).

python examples/cifar10.py --base-filters 64 --optimizer sam --rho 0.1
python examples/cifar10.py --base-filters 16 --strategy mirrored \
    --replica-eps per_replica
"""

import _common


def main(argv=None) -> dict:
    args = _common.parser(
        __doc__, "base-filters", int, 64, "ResNet-18 base filters (2^k)"
    ).parse_args(argv)
    return _common.train(args, "cifar10")


if __name__ == "__main__":
    main()

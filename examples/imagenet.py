"""ImageNet, ResNet-50 with base filters 16k, SGD vs SAM (paper: Section 4).

ImageNet needs a manual download prepared with tensorflow-datasets:
python examples/imagenet.py --data-dir ~/tfds --base-filters 64 --rho 0.05
"""

import _common


def main(argv=None) -> dict:
    p = _common.parser(__doc__, "base-filters", int, 64, "ResNet-50 base filters (16k)")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    return _common.train(args, "imagenet", image_size=args.image_size)


if __name__ == "__main__":
    main()

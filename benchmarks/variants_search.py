"""The rho search (`keras-sam sweep --rhos auto`) of a variant study, from a
start grid of its own instead of the preset's (the variants' best rhos on
MNIST-1D lie far above the `paper` preset's 0.05-0.2).

    KERAS_BACKEND=jax python benchmarks/variants_search.py --start-rhos 0.2,0.5,1 \\
        mnist1d --preset paper --sizes 256 --seeds 0,1,2 \\
        --sam-variants looksam_paper02,lazysam --out docs/sweep-variants-mnist1d

Every other argument is `keras-sam sweep`'s (with ``--rhos auto`` implied);
the names of `variants_sweep.py` are registered first. The start grid only
shapes the sweep: the runs' config ids and keys are the preset's, so runs
already in the folder are reused.
"""

import sys

from variants_sweep import EXTRA, _named

from keras_sam.study import cli


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--start-rhos":
        print(__doc__, file=sys.stderr)
        return 2
    start = tuple(float(r) for r in argv[1].split(","))
    for extra_name, (cls, options) in EXTRA.items():
        _named(extra_name, cls, **options)
    args = cli.build_parser().parse_args(["sweep", *argv[2:], "--rhos", "auto"])
    cli._start_library("sweep")
    from keras_sam.study import sweep_cli
    from keras_sam.study.sweep import rho_search

    preset = sweep_cli.sweep_preset(args).replace(rhos=start)
    return rho_search.run_command(args, preset, args.out, None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

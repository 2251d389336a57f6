"""`keras-sam sweep` with SAM variants at options other than their defaults,
under names of their own (the records of docs/sweep-variants-mnist1d/).

    KERAS_BACKEND=jax python benchmarks/variants_sweep.py mnist1d --preset paper \\
        --sizes 256 --rhos 0.2,0.5,1 --seeds 0,1 \\
        --sam-variants looksam_paper,looksam_paper02,lazysam --out OUT

Any `keras-sam sweep` arguments; the extra names below are registered first
(`keras-sam sweep` itself takes registered names only).
"""

import sys

from keras import ops

from keras_sam import variants
from keras_sam.study.cli import main


class MeasuredLookSAM(variants.LookSAM):
    """LookSAM whose cheap steps add alpha |g| / |g_k| gv (g_k: the clean
    gradient of the last SAM step): the reused part keeps the size SAM
    measured relative to the gradient instead of the paper's alpha |g|.
    Tried as a default and not kept (docs/variants.md)."""

    def _store(self, g, gs):
        d, state = super()._store(g, gs)
        return d, state[:-1] + [ops.sqrt(variants.base.dot(g, g))]


def _named(name: str, cls: type, **options) -> None:
    variants.register(name)(
        type(name, (cls,), {"__init__": lambda self: cls.__init__(self, **options)})
    )


EXTRA = {
    # Liu et al.'s alpha (the default before 2026-12-07) and the new default.
    "looksam_paper": (variants.LookSAM, dict(alpha=0.7)),
    "looksam_paper02": (variants.LookSAM, dict(alpha=0.2)),
    "looksam_measured": (MeasuredLookSAM, dict(alpha=1.0)),
    # WSAM's coupled form, the default before 2026-12-07 (records named
    # "wsam" before then were renamed to this).
    "wsam_coupled": (variants.WSAM, dict(decoupled=False)),
}

if __name__ == "__main__":
    for extra_name, (cls, options) in EXTRA.items():
        _named(extra_name, cls, **options)
    sys.exit(main(["sweep", *sys.argv[1:]]))

"""Tiny sweep presets and the rho search's fake runner, shared by the sweep
tests (their fixtures, `counted` and `fake`, are in conftest.py)."""

import math
import os

from keras_sam.study.workloads import get_preset

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
TINY = dict(
    sizes=(4, 8),
    rhos=(0.1,),
    seeds=(0,),
    epochs=1,
    num_train=128,
    num_test=64,
    batch_size=64,
    lr=0.01,
)
TINY_ARGS = [
    "--sizes", "4,8", "--rhos", "0.1,0.2", "--seeds", "0", "--epochs", "2",
    "--num-train", "128", "--num-test", "64", "--batch-size", "32", "--lr", "0.01",
]  # fmt: skip


def tiny(**changes):
    return get_preset("synthetic", "quick").replace(**{**TINY, **changes})


# The test loss (lower is better) of the fake runner: the baseline's is 1 (+
# a seed offset that every method shares, so that pairing cancels it); SAM
# lowers it by 0.1 at rho* and less with each factor of 2 away from it.
OPTIMUM = {4: 0.8, 8: 0.025, 16: 1.6}
DIVERGES_FROM = {16: 0.8}  # NaN at rho >= 0.8: best 0.4, below the divergence
HURTS = 32  # SAM worse than the baseline at every rho, more so at larger rho


def fake_value(spec) -> float:
    size = int(spec.size)
    offset = 0.01 * ((3 * spec.seed + size) % 4)
    if spec.rho is None:
        return 1.0 + offset
    if size == HURTS:
        return 1.0 + offset + 0.01 * spec.rho
    if spec.rho >= DIVERGES_FROM.get(size, math.inf):
        return math.nan
    distance = math.log2(spec.rho / OPTIMUM[size])
    return 1.0 + offset - 0.1 * math.exp(-(distance**2) / 2)


def preset(**changes):
    base = dict(sizes=(4, 8, 16, 32), rhos=(0.05, 0.1, 0.2), seeds=(0, 1, 2))
    base.update(num_train=64, num_test=32, epochs=1, batch_size=32)
    return get_preset("synthetic", "quick").replace(**{**base, **changes})

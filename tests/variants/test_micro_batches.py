"""Variants with micro-batches on every backend, against a NumPy re-derivation:
eps per micro-batch, `combine` once on the batch means of g and gs."""

import keras
import numpy as np

from keras_sam import variants
from tests import reference as sam_reference
from tests.models import assert_weights_close, mlp, weights_of

LR = 0.1


def _dot(a, b):
    return sum(np.sum(u * v) for u, v in zip(a, b))


def looksam_micro_reference(params, x, y, m, rho, every, alpha, steps):
    """LookSAM on micro-batches of m (a partial last one weighted by size):
    eps per micro-batch, d from the batch means of g and gs."""
    params = [p.astype(np.float64) for p in params]
    n, gv = len(x), None
    for i in range(steps):
        _, g = sam_reference.loss_and_grads(params, x, y)
        if i % every == 0:
            gs = [np.zeros_like(p) for p in params]
            for k in range(0, n, m):
                part = sam_reference.sam_gradient(
                    "sam", params, x[k : k + m], y[k : k + m], rho
                )[2]
                f = len(x[k : k + m]) / n
                gs = [a + f * b for a, b in zip(gs, part)]
            c = _dot(gs, g) / _dot(g, g)
            gv = [s - c * a for s, a in zip(gs, g)]
            d = gs
        else:
            scale = alpha * np.sqrt(_dot(g, g)) / np.sqrt(_dot(gv, gv))
            d = [a + scale * v for a, v in zip(g, gv)]
        params = [p - LR * a for p, a in zip(params, d)]
    return params


def test_looksam_micro_batches_with_a_partial_one_match_numpy(regression_data):
    """20 examples in micro-batches of 8, 8 and 4; SAM steps 0 and 2, a
    LookSAM reuse step between them."""
    x, y = regression_data[0][:20], regression_data[1][:20]
    model = mlp(
        rho=0.2, micro_batch_size=8, variant=variants.LookSAM(every=2, alpha=0.7)
    )
    params = weights_of(model)
    expected = looksam_micro_reference(params, x, y, 8, 0.2, 2, 0.7, 3)
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=20, epochs=3, verbose=0, shuffle=False)
    assert model.gradient_passes == 5
    assert_weights_close(weights_of(model), expected, atol=1e-5)


def test_micro_batches_combine_the_batch_averages(regression_data):
    """GSAM on micro-batches: d from the mean clean gradient and the mean of
    the micro-batches' perturbed gradients."""
    x, y = regression_data[0][:16], regression_data[1][:16]
    model = mlp(rho=0.2, micro_batch_size=8, variant=variants.GSAM(alpha=0.5))
    params = weights_of(model)
    pieces = [
        sam_reference.sam_gradient("sam", params, x[k : k + 8], y[k : k + 8], 0.2)[2]
        for k in (0, 8)
    ]
    gs = [np.mean([p[i] for p in pieces], axis=0) for i in range(4)]
    _, g = sam_reference.loss_and_grads(params, x, y)
    dot = lambda a, b: sum(np.sum(u * v) for u, v in zip(a, b))  # noqa: E731
    c = dot(g, gs) / dot(gs, gs)
    d = [s - 0.5 * (a - c * s) for a, s in zip(g, gs)]
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.train_on_batch(x, y)
    assert_weights_close(weights_of(model), [p - LR * a for p, a in zip(params, d)])

"""The rules' global dot product on TensorFlow, with fewer passes over
memory than its `keras.ops` version in `keras_sam._gradient_math`.

The TensorFlow step runs inside `keras_sam._gradient_math.dot_kernel(dot)`,
so that the perturbation rules' `global_norm` and the variants' `dot` and
`norm` use this one. A squared norm x.x is one `tf.nn.l2_loss` kernel per
tensor (x read once) instead of a product (written in full) and a sum (read
back): about a third of the time on CPU. Results differ only by float
rounding.

Tried and left out (docs/benchmarks.md): linear combinations compiled with
XLA as one nested function (one fused loop per tensor) are cheaper alone but
dearer inside the step, where they wait for every gradient and run
single-threaded, while TensorFlow's per-tensor kernels overlap with the rest
of the backward pass; XLA's CPU reductions are several times slower than
Eigen's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


def dot(a: Sequence[Any], b: Sequence[Any]) -> tf.Tensor:
    """Global dot product of two gradient lists (float32 scalar)."""
    squares, products = [], []
    for x, y in zip(a, b):
        if x is y:
            squares.append(tf.nn.l2_loss(tf.cast(x, tf.float32)))
        else:
            x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
            products.append(tf.reduce_sum(x * y))
    if squares:
        products.append(2.0 * tf.add_n(squares))
    return tf.add_n(products) if products else tf.constant(0.0)

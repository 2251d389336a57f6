"""The micro-batch loop of the JAX SAM step (m-sharpness): a `jax.lax.scan`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
from keras import tree

from keras_sam import sam_step
from keras_sam.backend._common import first_tensor

#: Up to this many full micro-batches the scan is unrolled: XLA on CPU runs
#: loop bodies single-threaded and without its fast convolutions (a small CNN
#: with 4 micro-batches: 10.5 s/step rolled, 0.28 s unrolled, and it compiles
#: faster); above it the program would grow with the count.
MAX_UNROLLED_MICRO_BATCHES = 16


def run(model, fn, data, state_variables):
    """``fn(x, y, sample_weight) -> (Terms, y_pred)`` on floor(n/m)
    micro-batches of m in a scan (`scanned`), then on one of n mod m if that
    is not 0 (shapes are static under jit). `state_variables` are the
    variables of the step's `StatelessScope` (groups, in Keras's order).

    Returns:
        ``(Terms, y_pred)``: the terms averaged with weight size / n, y_pred
        concatenated.
    """
    m = model.micro_batch_size
    n = first_tensor(data).shape[0]
    num_full, rest = divmod(n, m)
    parts = []  # (fraction of the batch, mean terms, y_pred)
    if num_full:

        def split(t):
            return t[: num_full * m].reshape((num_full, m) + tuple(t.shape[1:]))

        batches = tree.map_structure(lambda t: None if t is None else split(t), data)
        terms, y_pred = scanned(model, fn, batches, state_variables)
        y_pred = tree.map_structure(
            lambda t: t.reshape((num_full * m,) + tuple(t.shape[2:])), y_pred
        )
        parts.append((num_full * m / n, terms, y_pred))
    if rest:
        tail = tree.map_structure(
            lambda t: None if t is None else t[num_full * m :], data
        )
        parts.append((rest / n, *fn(*tail)))
    terms = tree.map_structure(
        lambda *values: sum(f * v for (f, _, _), v in zip(parts, values)),
        *[p[1] for p in parts],
    )
    y_pred = tree.map_structure(
        lambda *pieces: jnp.concatenate(pieces), *[p[2] for p in parts]
    )
    return terms, y_pred


def scanned(model, fn, batches, state_variables):
    """`fn` on each of `batches` ([num_full, m, ...] slices) in a scan that
    carries the non-trainable and metrics values, so each clean pass updates
    them in order.

    A `jax.vmap` over the micro-batches measured 1.7-2.8x slower than this
    scan on a CPU (`benchmarks/jax_micro_batches.py`): the perturbed passes,
    each at its own w + eps, become batched matrix products.

    Returns:
        ``(mean Terms, y_pred [num_full, m, ...])``.
    """
    num_full = first_tensor(batches).shape[0]
    carried = list(model.non_trainable_variables) + list(model.metrics_variables)
    outer = [(v, v.value) for group in state_variables for v in group]

    def body(carry, batch):
        values, sums = carry
        override = {id(v): value for v, value in zip(carried, values)}
        mapping = [(v, override.get(id(v), value)) for v, value in outer]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            terms, y_pred = fn(*batch)
        values = [scope.get_current_value(v) for v in carried]
        sums = tree.map_structure(lambda a, b: a + b.astype(a.dtype), sums, terms)
        return (values, sums), y_pred

    zeros = [jnp.zeros(v.shape, v.dtype) for v in model.trainable_variables]
    zero = jnp.zeros((), "float32")
    initial = (
        [v.value for v in carried],
        sam_step.Terms(zeros, zeros, zero, zero, zero),
    )
    (values, sums), y_pred = jax.lax.scan(
        body, initial, batches, unroll=num_full <= MAX_UNROLLED_MICRO_BATCHES
    )
    for variable, value in zip(carried, values):
        variable.assign(value)
    return tree.map_structure(lambda t: t / num_full, sums), y_pred

"""Dense Hessian and gradient references, one code path per backend, each
independent of the library's products (no StatelessScope, no HVP code):

- TensorFlow: `tf.GradientTape.jacobian` of the tape gradient (no pfor);
- JAX: `jax.jacrev(jax.grad(...))` (reverse over reverse; the library
  differentiates forward over reverse) of Keras's own
  `model.stateless_call` / `model.compute_loss_and_updates`;
- PyTorch: one `torch.autograd.grad` per gradient coordinate of the
  gradient of an ordinary model call (Keras torch variables are
  parameters that require grad).

``loss_fn=None``: Keras's compiled loss, ``model.compute_loss`` (with
``model.losses``); else ``mean(loss_fn(y, model(x)))``.
"""

import keras
import numpy as np
from keras import tree

BACKEND = keras.backend.backend()


def _one(structure, i):
    return tree.map_structure(lambda t: t[i : i + 1], structure)


def _symmetric(hessians):
    hessians = np.asarray(hessians, dtype=np.float64)
    return 0.5 * (hessians + np.transpose(hessians, (0, 2, 1)))


def per_example_hessians(model, x, y, loss_fn=None, sample_weight=None):
    """(n, P, P) float64 per-example Hessians (``sample_weight``: each
    example's rows passed to ``model.compute_loss``)."""
    n = len(tree.flatten(x)[0])
    one = {"tensorflow": _tf_hessian, "jax": _jax_hessian, "torch": _torch_hessian}
    hessian = one[BACKEND](model, loss_fn)
    if sample_weight is None:
        return _symmetric([hessian(_one(x, i), _one(y, i)) for i in range(n)])
    return _symmetric(
        [hessian(_one(x, i), _one(y, i), sample_weight[i : i + 1]) for i in range(n)]
    )


def gradient(model, x, y, loss_fn):
    """Flat float64 gradient of ``mean(loss_fn(y, model(x)))``."""
    return np.asarray(_GRADIENTS[BACKEND](model, loss_fn, x, y), np.float64)


# -- TensorFlow -------------------------------------------------------------


def _tf_loss(model, loss_fn, x, y, training=False, sample_weight=None):
    import tensorflow as tf

    pred = model(x, training=training)
    if loss_fn is None:
        return model.compute_loss(
            x, y, pred, sample_weight=sample_weight, training=training
        )
    return tf.reduce_mean(loss_fn(y, pred))


def _tf_flat(tensors):
    import tensorflow as tf

    return tf.concat([tf.reshape(tf.convert_to_tensor(t), [-1]) for t in tensors], 0)


def _tf_hessian(model, loss_fn):
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function
    def hessian(x, y, sw=None):
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                loss = _tf_loss(model, loss_fn, x, y, sample_weight=sw)
            grad = _tf_flat(inner.gradient(loss, variables))
        blocks = outer.jacobian(grad, variables, experimental_use_pfor=False)
        return tf.concat([tf.reshape(b, [grad.shape[0], -1]) for b in blocks], 1)

    def numpy_hessian(x, y, sw=None):
        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        y = tf.nest.map_structure(tf.convert_to_tensor, y)
        return hessian(x, y, sw).numpy()

    return numpy_hessian


def _tf_gradient(model, loss_fn, x, y):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = _tf_loss(model, loss_fn, x, y)
    return _tf_flat(tape.gradient(loss, model.trainable_variables)).numpy()


# -- JAX ----------------------------------------------------------------------


def _jax_loss(model, loss_fn, training=False):
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    metrics = [v.value for v in model.metrics_variables]
    optimizer = [v.value for v in model.optimizer.variables] if training else None
    flat, unravel = ravel_pytree(trainable)

    def loss(w, x, y, sw=None):
        if loss_fn is None:
            value, _ = model.compute_loss_and_updates(
                unravel(w),
                non_trainable,
                metrics,
                x,
                y,
                sw,
                training=training,
                optimizer_variables=optimizer,
            )
            return value
        pred, _ = model.stateless_call(unravel(w), non_trainable, x, training=False)
        return jnp.mean(loss_fn(y, pred))

    return flat, loss


def _jax_hessian(model, loss_fn):
    import jax

    flat, loss = _jax_loss(model, loss_fn)
    hessian = jax.jit(jax.jacrev(jax.grad(loss)))
    return lambda x, y, sw=None: np.asarray(hessian(flat, x, y, sw))


def _jax_gradient(model, loss_fn, x, y):
    import jax

    flat, loss = _jax_loss(model, loss_fn)
    return np.asarray(jax.grad(loss)(flat, x, y))


# -- PyTorch ------------------------------------------------------------------


def _torch_loss(model, loss_fn, x, y, training=False, sample_weight=None):
    import torch

    x = tree.map_structure(torch.as_tensor, x)
    y = tree.map_structure(torch.as_tensor, y)
    pred = model(x, training=training)
    if loss_fn is None:
        if sample_weight is not None:
            sample_weight = torch.as_tensor(sample_weight)
        return model.compute_loss(
            x, y, pred, sample_weight=sample_weight, training=training
        )
    return torch.mean(loss_fn(y, pred))


def _torch_flat_grad(output, params, batched=False, **kwargs):
    import torch

    grads = torch.autograd.grad(output, params, allow_unused=True, **kwargs)
    lead = (output.shape[0],) if batched else ()
    return torch.cat(
        [
            (torch.zeros(lead + p.shape) if g is None else g).reshape(*lead, -1)
            for g, p in zip(grads, params)
        ],
        dim=-1,
    )


def _torch_hessian(model, loss_fn):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def hessian(x, y, sw=None):
        params = [v.value for v in model.trainable_variables]
        # The fused CPU attention kernel has no double backward.
        with sdpa_kernel([SDPBackend.MATH]):
            loss = _torch_loss(model, loss_fn, x, y, sample_weight=sw)
        grad = _torch_flat_grad(loss, params, create_graph=True)
        # All rows in one batched backward (vmap over the cotangents).
        eye = torch.eye(grad.shape[0], dtype=grad.dtype)
        rows = _torch_flat_grad(
            grad, params, grad_outputs=eye, is_grads_batched=True, batched=True
        )
        return rows.detach().cpu().numpy()

    return hessian


def _torch_gradient(model, loss_fn, x, y, training=False):
    params = [v.value for v in model.trainable_variables]
    grad = _torch_flat_grad(_torch_loss(model, loss_fn, x, y, training), params)
    return grad.detach().cpu().numpy()


_GRADIENTS = {
    "tensorflow": _tf_gradient,
    "jax": _jax_gradient,
    "torch": _torch_gradient,
}


# -- Finite differences (float64) ----------------------------------------------


def _flat_gradient_function(model, training=False):
    """``w -> gradient at w`` of Keras's compiled loss (with model.losses),
    flat float64, w a flat vector of the trainable weights (set in the
    model's variables)."""
    variables = model.trainable_variables
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]
    if BACKEND == "jax":
        import jax

        _, loss = _jax_loss(model, None, training)
        grad = jax.grad(loss)
        return lambda w, x, y: np.asarray(grad(w.astype("float32"), x, y), np.float64)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function
        def tf_grad(x, y):
            with tf.GradientTape() as tape:
                loss = _tf_loss(model, None, x, y, training)
            return _tf_flat(tape.gradient(loss, variables))

    def grad(w, x, y):
        for v, part in zip(variables, np.split(w, np.cumsum(sizes)[:-1])):
            v.assign(part.reshape(v.shape).astype(v.dtype))
        if BACKEND == "tensorflow":
            x = tf.nest.map_structure(tf.convert_to_tensor, x)
            y = tf.nest.map_structure(tf.convert_to_tensor, y)
            return np.asarray(tf_grad(x, y), np.float64)
        return np.asarray(_torch_gradient(model, None, x, y, training), np.float64)

    return grad


def _flat_weights(model):
    return np.concatenate(
        [
            np.asarray(keras.ops.convert_to_numpy(v), np.float64).reshape(-1)
            for v in model.trainable_variables
        ]
    )


def finite_difference_hvp(model, x, y, v, step=1e-4, training=False):
    """``H v`` by central differences of the gradient (error about step^2
    plus the gradient's rounding / step), H the Hessian of Keras's compiled
    loss of the batch; the weights are restored."""
    w = _flat_weights(model)
    grad = _flat_gradient_function(model, training)
    v = np.asarray(v, np.float64)
    try:
        return (grad(w + step * v, x, y) - grad(w - step * v, x, y)) / (2 * step)
    finally:
        grad(w, x, y)


# -- Output Jacobians (for the Gauss-Newton matrix) ------------------------------


def output_jacobians(model, x):
    """(n, outputs, P) float64 Jacobians of each example's flattened model
    outputs (inference mode) in the trainable weights, by plain autodiff of
    an ordinary model call (no library code)."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as tape:
            out = model(tf.convert_to_tensor(x), training=False)
        blocks = tape.jacobian(out, variables, experimental_use_pfor=False)
        n = out.shape[0]
        jac = tf.concat(
            [
                tf.reshape(b, [n, -1, int(np.prod(v.shape))])
                for b, v in zip(blocks, variables)
            ],
            2,
        )
        return np.asarray(jac, np.float64)
    if BACKEND == "jax":
        import jax
        from jax.flatten_util import ravel_pytree

        trainable = [v.value for v in variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        flat, unravel = ravel_pytree(trainable)

        def outputs(w):
            pred, _ = model.stateless_call(unravel(w), non_trainable, x, training=False)
            return pred.reshape(pred.shape[0], -1)

        return np.asarray(jax.jacrev(outputs)(flat), np.float64)
    import torch

    params = [v.value for v in variables]
    out = model(torch.as_tensor(x), training=False)
    out = out.reshape(out.shape[0], -1)
    rows = [
        _torch_flat_grad(out[i, o], params, retain_graph=True).detach().cpu().numpy()
        for i in range(out.shape[0])
        for o in range(out.shape[1])
    ]
    return np.asarray(rows, np.float64).reshape(out.shape[0], out.shape[1], -1)

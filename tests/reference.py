"""Independent NumPy re-derivation of SAM on a 5-h-1 tanh MLP with squared loss.

The model is Dense(h, tanh) -> Dense(1), loss = sum_i s_i * (f(x_i) - y_i)^2 / n
(Keras' "sum over batch size" reduction with sample weights s_i), plus
l2 * ||W1||^2 from a kernel regularizer on the first layer.
"""

import numpy as np


def loss_and_grads(params, x, y, sample_weight=None, l2=0.0):
    w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
    n = x.shape[0]
    s = np.ones(n) if sample_weight is None else sample_weight.astype(np.float64)
    h = np.tanh(x @ w1 + b1)
    r = h @ w2 + b2 - y
    loss = np.sum(s * r[:, 0] ** 2) / n + l2 * np.sum(w1**2)
    d_out = 2 * r * s[:, None] / n
    d_w2 = h.T @ d_out
    d_b2 = d_out.sum(0)
    d_pre = (d_out @ w2.T) * (1 - h**2)
    d_w1 = x.T @ d_pre + 2 * l2 * w1
    d_b1 = d_pre.sum(0)
    return loss, [d_w1, d_b1, d_w2, d_b2]


def epsilon(rule, grads, params, rho, eta=0.01):
    if rule == "usam":
        return [rho * g for g in grads]
    if rule == "sam":
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        return [rho * g / (norm + 1e-12) for g in grads]
    if rule == "asam":
        scales = [np.abs(p) + eta if p.ndim >= 2 else np.ones_like(p) for p in params]
        norm = np.sqrt(sum(np.sum((t * g) ** 2) for t, g in zip(scales, grads)))
        return [rho * t**2 * g / (norm + 1e-12) for t, g in zip(scales, grads)]
    raise ValueError(rule)


def sam_gradient(rule, params, x, y, rho, sample_weight=None, l2=0.0):
    """(clean loss, perturbed loss, perturbed gradient) of one SAM step."""
    loss, grads = loss_and_grads(params, x, y, sample_weight, l2)
    eps = epsilon(rule, grads, params, rho)
    perturbed = [p + e for p, e in zip(params, eps)]
    perturbed_loss, perturbed_grads = loss_and_grads(perturbed, x, y, sample_weight, l2)
    return loss, perturbed_loss, perturbed_grads

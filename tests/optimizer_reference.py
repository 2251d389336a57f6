"""NumPy optimizers for the SAM-with-every-optimizer tests.

Written from the papers and the semantics Keras documents, not by calling
Keras: each update rule is a small pure function ``rule(w, g, slots, t, lr)
-> new w`` (`slots`: that variable's state, filled on first use; `t`: the
1-based update count), and `Optimizer` adds what Keras's base optimizer does
around any rule, in its order:

1. gradient accumulation (``accumulation_steps`` k): a micro-step adds g to
   the accumulator and changes nothing else; every k-th applies the mean of
   the k gradients (and empties the accumulator);
2. clipping of the applied gradient (``clipnorm`` per variable,
   ``global_clipnorm`` over all, ``clipvalue`` per entry);
3. decoupled weight decay, w -= lr * weight_decay * w (Loshchilov & Hutter),
   once per update, at w;
4. the rule;
5. EMA of the weights after every call, momentum 0 on the first
   (average = w), optionally written into the weights every
   ``ema_overwrite_frequency`` updates, and into them at the end of `fit`.
"""

from __future__ import annotations

import numpy as np

from tests import reference


def sgd(momentum=0.0, nesterov=False):
    """Keras's SGD: v = momentum v - lr g; w += v (nesterov: w += momentum v
    - lr g)."""

    def rule(w, g, slots, t, lr):
        if not momentum:
            return w - lr * g
        v = momentum * slots.get("v", 0.0) - lr * g
        slots["v"] = v
        return w + (momentum * v - lr * g if nesterov else v)

    return rule


def l2sgd(momentum=0.0, l2=0.0):
    """PyTorch's SGD with coupled decay: b = momentum b + g + l2 w;
    w -= lr b."""

    def rule(w, g, slots, t, lr):
        b = momentum * slots.get("b", 0.0) + g + l2 * w
        slots["b"] = b
        return w - lr * b

    return rule


def adam(beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Kingma & Ba, with epsilon outside the bias-corrected square root
    (their section 2's efficient form)."""

    def rule(w, g, slots, t, lr):
        m = beta_1 * slots.get("m", 0.0) + (1 - beta_1) * g
        v = beta_2 * slots.get("v", 0.0) + (1 - beta_2) * g**2
        slots.update(m=m, v=v)
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        return w - alpha * m / (np.sqrt(v) + epsilon)

    return rule


def lion(beta_1=0.9, beta_2=0.99):
    """Chen et al. 2023: w -= lr sign(beta_1 m + (1 - beta_1) g);
    m = beta_2 m + (1 - beta_2) g."""

    def rule(w, g, slots, t, lr):
        m = slots.get("m", 0.0)
        slots["m"] = beta_2 * m + (1 - beta_2) * g
        return w - lr * np.sign(beta_1 * m + (1 - beta_1) * g)

    return rule


def rmsprop(rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    """Hinton's RMSprop: v = rho v + (1 - rho) g^2; step = lr g /
    sqrt(v - a^2 + eps) (a: mean gradient, centered only); with momentum,
    b = momentum b + step and w -= b."""

    def rule(w, g, slots, t, lr):
        v = rho * slots.get("v", 0.0) + (1 - rho) * g**2
        slots["v"] = v
        denominator = v + epsilon
        if centered:
            a = rho * slots.get("a", 0.0) + (1 - rho) * g
            slots["a"] = a
            denominator = v - a**2 + epsilon
        step = lr * g / np.sqrt(denominator)
        if momentum:
            step = momentum * slots.get("b", 0.0) + step
            slots["b"] = step
        return w - step

    return rule


def adafactor(beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0):
    """Shazeer & Stern 2018, relative step size: rho_t = min(lr, 1/sqrt(t)),
    alpha_t = max(epsilon_2, RMS(w)) rho_t, beta_t = 1 - t^beta_2_decay;
    second moments of g^2 + epsilon_1 factored over the last two axes for
    rank >= 2 (row means r, column means c, v = r c / mean(r)), full below;
    u = g / sqrt(v), clipped to RMS(u) <= clip_threshold."""

    def rms(a):
        return np.sqrt(np.mean(a**2))

    def rule(w, g, slots, t, lr):
        rho_t = min(lr, 1 / np.sqrt(t))
        alpha = max(epsilon_2, rms(w)) * rho_t
        beta = 1 - t**beta_2_decay
        g2 = g**2 + epsilon_1
        if w.ndim >= 2:
            r = beta * slots.get("r", 0.0) + (1 - beta) * g2.mean(-1)
            c = beta * slots.get("c", 0.0) + (1 - beta) * g2.mean(-2)
            slots.update(r=r, c=c)
            v = (r / r.mean(-1, keepdims=True))[..., None] * c[..., None, :]
        else:
            v = beta * slots.get("v", 0.0) + (1 - beta) * g2
            slots["v"] = v
        u = g / np.sqrt(v)
        return w - alpha * u / max(1.0, rms(u) / clip_threshold)

    return rule


class Optimizer:
    """A rule with Keras's base-optimizer options (see the module doc)."""

    def __init__(
        self,
        rule,
        learning_rate,
        *,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        accumulation_steps=None,
    ):
        self.rule, self.lr = rule, learning_rate
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue = clipnorm, clipvalue
        self.global_clipnorm = global_clipnorm
        self.use_ema, self.ema_momentum = use_ema, ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.k = accumulation_steps or 1
        self.calls = 0  # Keras's micro-step count
        self.slots = self.accumulated = self.average = None

    @property
    def updates(self):
        """Keras's `iterations`: updates applied."""
        return self.calls // self.k

    def clip(self, grads):
        if self.clipnorm:
            return [
                g * self.clipnorm / max(np.linalg.norm(g), self.clipnorm) for g in grads
            ]
        if self.global_clipnorm:
            norm = np.sqrt(sum(np.sum(g**2) for g in grads))
            return [
                g * self.global_clipnorm / max(norm, self.global_clipnorm)
                for g in grads
            ]
        if self.clipvalue:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return list(grads)

    def apply(self, params, grads):
        if self.slots is None:
            self.slots = [{} for _ in params]
            self.accumulated = [np.zeros_like(p) for p in params]
        params = list(params)
        if (self.calls + 1) % self.k:
            self.accumulated = [a + g for a, g in zip(self.accumulated, grads)]
        else:
            grads = [(a + g) / self.k for a, g in zip(self.accumulated, grads)]
            self.accumulated = [np.zeros_like(p) for p in params]
            grads = self.clip(grads)
            if self.weight_decay:
                params = [p - self.lr * self.weight_decay * p for p in params]
            t = self.updates + 1
            params = [
                self.rule(p, g, s, t, self.lr)
                for p, g, s in zip(params, grads, self.slots)
            ]
        if self.use_ema:
            momentum = self.ema_momentum if self.updates else 0.0
            if self.average is None:
                self.average = [np.zeros_like(p) for p in params]
            self.average = [
                momentum * a + (1 - momentum) * p for a, p in zip(self.average, params)
            ]
            frequency = self.ema_overwrite_frequency
            if frequency and (self.updates + 1) % frequency == 0:
                params = [a.copy() for a in self.average]
        self.calls += 1
        return params

    def finalize(self, params):
        """What `fit` does at its end (EMA: the weights become the average)."""
        return [a.copy() for a in self.average] if self.use_ema else params


class Multi:
    """Keras's `MultiOptimizer`: each group of variables (by index) gets its
    own optimizer, clipping included."""

    def __init__(self, groups):
        self.groups = groups  # [(indices, Optimizer)]

    def _split(self, values, indices):
        return [values[i] for i in indices]

    def clip(self, grads):
        clipped = list(grads)
        for indices, optimizer in self.groups:
            for i, g in zip(indices, optimizer.clip(self._split(grads, indices))):
                clipped[i] = g
        return clipped

    def apply(self, params, grads):
        params = list(params)
        for indices, optimizer in self.groups:
            new = optimizer.apply(
                self._split(params, indices), self._split(grads, indices)
            )
            for i, p in zip(indices, new):
                params[i] = p
        return params

    def finalize(self, params):
        params = list(params)
        for indices, optimizer in self.groups:
            for i, p in zip(indices, optimizer.finalize(self._split(params, indices))):
                params[i] = p
        return params


def sam_fit(params, batches, gradients, optimizer, rho, rule="sam", clip_eps=False):
    """Weights after SAM steps on `batches` [(x, y)] (then `fit`'s final
    EMA swap): eps from the clean gradient (clipped by `optimizer` first where
    `clip_eps`), the perturbed gradient applied at w.
    ``gradients(params, x, y) -> list`` is the loss gradient."""
    params = [np.asarray(p, np.float64) for p in params]
    for x, y in batches:
        grads = gradients(params, x, y)
        eps_grads = optimizer.clip(grads) if clip_eps else grads
        eps = reference.epsilon(rule, eps_grads, params, rho)
        perturbed = gradients([p + e for p, e in zip(params, eps)], x, y)
        params = optimizer.apply(params, perturbed)
    return optimizer.finalize(params)

"""NumPy re-derivation of the SAM variants over several plain-SGD full-batch
steps on the 5-h-1 tanh MLP of tests/reference.py, written from the formulas
in the papers (independently of keras_sam.variants)."""

import numpy as np

from tests import reference


def _dot(a, b):
    return sum(np.sum(x * y) for x, y in zip(a, b))


def _norm(a):
    return np.sqrt(_dot(a, a))


def train(variant, params, x, y, rho, lr, steps, rule="sam", masks=None, **options):
    """Weights after `steps` SGD steps with `variant`, and the number of
    forward-backward passes taken. `rho` may be a function of the step;
    `masks` (one 0/1 array or None per weight) multiply g, eps and gs."""
    masks = masks or [None] * len(params)

    def masked(grads):
        return [a if m is None else a * m for a, m in zip(grads, masks)]

    params = [p.astype(np.float64) for p in params]
    state = {}
    passes = 0
    for i in range(steps):
        g = masked(reference.loss_and_grads(params, x, y)[1])
        passes += 1

        rho_i = rho(i) if callable(rho) else rho

        def perturbed(direction, params=params, rho_i=rho_i):
            eps = masked(reference.epsilon(rule, direction, params, rho_i))
            shifted = [p + e for p, e in zip(params, eps)]
            return masked(reference.loss_and_grads(shifted, x, y)[1])

        if variant == "sam":
            d = perturbed(g)
        elif variant in ("latesam", "earlysam"):
            sam_now = i >= options["switch"]
            if variant == "earlysam":
                sam_now = not sam_now
            if sam_now:
                d = perturbed(g)
                passes += 1
            else:
                d = g
        elif variant in ("lazysam", "looksam"):
            k = options["every"]
            if i % k == 0:
                gs = perturbed(g)
                passes += 1
                d = gs
                if variant == "looksam":
                    c = _dot(gs, g) / _dot(g, g)
                    state["gv"] = [s - c * a for s, a in zip(gs, g)]
            elif variant == "lazysam":
                d = g
            else:
                gv = state["gv"]
                scale = options["alpha"] * _norm(g) / _norm(gv)
                d = [a + scale * v for a, v in zip(g, gv)]
        elif variant == "gsam":
            gs = perturbed(g)
            c = _dot(g, gs) / _dot(gs, gs)
            d = [s - options["alpha"] * (a - c * s) for a, s in zip(g, gs)]
        elif variant == "wsam":
            gs = perturbed(g)
            w = options["gamma"] / (1 - options["gamma"])
            d = [a + w * (s - a) for a, s in zip(g, gs)]
        elif variant == "fsam":
            lam, sigma = options["lmbda"], options["sigma"]
            m = state.get("m", [np.zeros_like(a) for a in g])
            m = [lam * mi + (1 - lam) * a for mi, a in zip(m, g)]
            state["m"] = m
            d = perturbed([a - sigma * mi for a, mi in zip(g, m)])
        elif variant == "aesam":
            delta, c = options["momentum"], options["threshold"]
            mean, var = state.get("stats", (0.0, 0.0))
            sq = _dot(g, g)
            mean = delta * mean + (1 - delta) * sq
            var = delta * var + (1 - delta) * (sq - mean) ** 2
            state["stats"] = (mean, var)
            if sq >= mean + c * np.sqrt(var):
                d = perturbed(g)
                passes += 1
            else:
                d = g
        else:
            raise ValueError(variant)
        if variant not in ("lazysam", "looksam", "aesam", "latesam", "earlysam"):
            passes += 1
        params = [p - lr * a for p, a in zip(params, d)]
    return params, passes


def train_msam(params, x, y, rho, lr, steps, optimizer="sgd", momentum=0.9):
    """Momentum-SAM (Becker et al. 2024, Algorithm 1) over `steps` full-batch
    steps: the gradient at w - rho v / |v| (v the accumulated gradient; 0 on
    the first step), applied at w by SGD with Keras's momentum (velocity
    m = mu m - lr g, w += m, so v = -m / lr) or by Adam (v = its first
    moment, Keras's bias correction and epsilon). rho = 0 is the optimizer
    alone."""
    params = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    for t in range(1, steps + 1):
        uphill = [-a for a in m] if optimizer == "sgd" else m
        size = _norm(uphill)
        scale = rho / size if size > 0 else 0.0
        shifted = [p - scale * u for p, u in zip(params, uphill)]
        g = reference.loss_and_grads(shifted, x, y)[1]
        if optimizer == "sgd":
            m = [momentum * a - lr * b for a, b in zip(m, g)]
            params = [p + a for p, a in zip(params, m)]
        else:
            m = [beta_1 * a + (1 - beta_1) * b for a, b in zip(m, g)]
            second = [beta_2 * a + (1 - beta_2) * b * b for a, b in zip(second, g)]
            alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            params = [
                p - alpha * a / (np.sqrt(b) + epsilon)
                for p, a, b in zip(params, m, second)
            ]
    return params


def train_wsam_momentum(params, x, y, rho, lrs, gamma, decoupled, momentum=0.9):
    """WSAM (Yue et al. 2023) over ``len(lrs)`` full-batch steps of SGD with
    Keras's momentum (velocity m = mu m - lr d, w += m), step i at rate
    lrs[i]. Coupled: d = g + c (gs - g), c = gamma / (1 - gamma). Decoupled
    (the paper's form): d = g, and after the optimizer's update
    w -= lr c (gs - g), outside the velocity."""
    c = gamma / (1 - gamma)
    params = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    for lr in lrs:
        g = reference.loss_and_grads(params, x, y)[1]
        eps = reference.epsilon("sam", g, params, rho)
        shifted = [p + e for p, e in zip(params, eps)]
        gs = reference.loss_and_grads(shifted, x, y)[1]
        sharp = [s - a for s, a in zip(gs, g)]
        d = g if decoupled else [a + c * b for a, b in zip(g, sharp)]
        m = [momentum * v - lr * a for v, a in zip(m, d)]
        params = [p + v for p, v in zip(params, m)]
        if decoupled:
            params = [p - lr * c * b for p, b in zip(params, sharp)]
    return params

"""SAM variants: how g and gs become the optimizer's direction, and when the
second pass runs.

```python
model = keras_sam.sam(model, rho=0.05, variant="looksam")  # paper defaults
model = keras_sam.sam(model, rho=0.05, variant=keras_sam.variants.LookSAM(every=5))
model.gradient_passes  # forward-backward passes taken so far
```

| class | d handed to the optimizer | passes per step |
|---|---|---|
| `PlainSAM` ("sam") | gs | 2 |
| `LazySAM(every)` | gs on every k-th step, else g | 1 + 1/k |
| `LookSAM(every, alpha)` | gs every k-th step, else g + alpha |g|/|gv| gv | 1 + 1/k |
| `GSAM(alpha)` | gs - alpha g_perp | 2 |
| `WSAM(gamma)` | g + gamma / (1 - gamma) (gs - g) | 2 |
| `FriendlySAM(sigma, lmbda)` | gs, eps from g - sigma EMA(g) | 2 |
| `RWP(sigma, mix)` | mix gs + (1 - mix) g, eps random | 2 |
| `SAMON(layer_types, paths)` | gs, eps on normalization layers only | 2 |
| `AESAM(threshold, momentum)` | gs when \\|g\\|^2 is high, else g | 1 to 2 |
| `LatePhaseSAM(total_steps, start)` | g until step start * total, then gs | 1, then 2 |
| `EarlyPhaseSAM(total_steps, stop)` | gs until step stop * total, then g | 2, then 1 |
| `MomentumSAM()` | the gradient at w + rule(-v), v the optimizer's momentum | 1 |

rho may be a number, a `keras.optimizers.schedules.LearningRateSchedule` or a
callable of the step; `ProportionalRho` is GSAM's rho-follows-lr schedule.

How a backend's training step calls a variant
---------------------------------------------

All methods are pure `keras.ops` functions; nothing here is backend code.
Notation: g = clean gradient (unscaled, masked), gs = gradient at w + eps,
step = `model.variant_step` (an integer variable the step adds 1 to after
each update: `optimizer.iterations` advances by the number of replicas per
step under Keras 3.15's MirroredStrategy), state = the values of
`model.variant_state` (Keras variables made from `variant.state_shapes`,
all starting at zero, saved with the model).

0. If ``variant.single_pass`` (Momentum-SAM): ``variables, sign =
   variant.optimizer_direction(optimizer, trainable)``; eps =
   ``variant.perturbation(rule, [sign * value of each], ...)`` (masked and
   selected as in 4); ONE pass at w + eps, with the model's state updates
   (it is the step's only pass), whose loss, predictions and gradient are
   the step's; d = that gradient; steps 2-5 do not run, and
   `gradient_pass_counter` grows by 1.
1. Once per trace: ``selection = variant.weight_selection(model)`` (None or
   one bool per trainable variable); multiply g by it before eps is formed
   and eps by it after.
2. Clean pass -> g (state updates happen here, once).
3. ``run = variant.needs_second_pass(step, g, state)`` if
   ``variant.skips_second_pass``, else True. It is a Python bool or a
   boolean scalar tensor: branch on it (`tf.cond`, `jax.lax.cond`, a Python
   `if` on torch) so that the perturbed pass is NOT computed when it is
   False; in that branch use gs = g.
4. If run: ``eps = variant.perturbation(rule, g, weights, rho, state, step,
   seed)`` with `rule` = `model.perturbation`,
   rho = `schedules.rho_at(model.rho, optimizer.iterations)`,
   `seed` = `model.variant_seed` (a `keras.random.SeedGenerator`, only used
   when ``variant.random``); perturbed pass at w + eps -> gs.
5. If ``variant.combines``: ``d, state = variant.combine(g, gs, state,
   step, run)`` on unscaled gradients, summed over replicas (the same d
   everywhere); write `state` back to the variables, but only when g and gs
   are finite. Else d = gs.
6. Hand d to the optimizer; add ``1 + run`` to `model.gradient_pass_counter`
   (a `Sum` metric, kept out of the logs) and 1 to `model.variant_step`.

With micro-batches: 3 and 4 per micro-batch (each with its own g, the same
state), then 5 once on the averaged g and gs, with ``run`` = any
micro-batch ran the second pass.
"""

from keras_sam.variants.adaptive import AESAM
from keras_sam.variants.base import Variant, get, names, register, serialize
from keras_sam.variants.friendly import FriendlySAM
from keras_sam.variants.gsam import GSAM
from keras_sam.variants.lazy import LazySAM
from keras_sam.variants.looksam import LookSAM
from keras_sam.variants.momentum import MomentumSAM
from keras_sam.variants.phases import EarlyPhaseSAM, LatePhaseSAM
from keras_sam.variants.plain import PlainSAM
from keras_sam.variants.rwp import RWP
from keras_sam.variants.sam_on import SAMON
from keras_sam.variants.schedules import ProportionalRho
from keras_sam.variants.wsam import WSAM

__all__ = [
    "AESAM",
    "EarlyPhaseSAM",
    "GSAM",
    "RWP",
    "SAMON",
    "WSAM",
    "FriendlySAM",
    "LatePhaseSAM",
    "LazySAM",
    "LookSAM",
    "MomentumSAM",
    "PlainSAM",
    "ProportionalRho",
    "Variant",
    "get",
    "names",
    "register",
    "serialize",
]

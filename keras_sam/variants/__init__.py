"""SAM variants: how g and gs become the optimizer's direction, and when the
second pass runs.

```python
model = keras_sam.sam(model, rho=0.05, variant="looksam")  # its defaults
model = keras_sam.sam(model, rho=0.05, variant=keras_sam.variants.LookSAM(every=5))
model.gradient_passes  # forward-backward passes taken so far
```

| class | d handed to the optimizer | passes per step |
|---|---|---|
| `PlainSAM` ("sam") | gs | 2 |
| `LazySAM(every)` | gs on every k-th step, else g | 1 + 1/k |
| `LookSAM(every, alpha)` | gs every k-th step, else g + alpha |g|/|gv| gv | 1 + 1/k |
| `GSAM(alpha)` | gs - alpha g_perp | 2 |
| `WSAM(gamma)` | g; then w -= lr c (gs - g), c = gamma / (1 - gamma) | 2 |
| `WSAM(gamma, decoupled=False)` | g + c (gs - g) | 2 |
| `FriendlySAM(sigma, lmbda)` | gs, eps from g - sigma EMA(g) | 2 |
| `RWP(sigma, mix)` | mix gs + (1 - mix) g, eps random | 2 |
| `SAMON(layer_types, paths)` | gs, eps on normalization layers only | 2 |
| `AESAM(threshold, momentum)` | gs when \\|g\\|^2 is high, else g | 1 to 2 |
| `LatePhaseSAM(total_steps, start)` | g until step start * total, then gs | 1, then 2 |
| `EarlyPhaseSAM(total_steps, stop)` | gs until step stop * total, then g | 2, then 1 |
| `MomentumSAM()` | the gradient at w + rule(-v), v the optimizer's momentum | 1 |

rho may be a number, a `keras.optimizers.schedules.LearningRateSchedule` or a
callable of the step; `ProportionalRho` is GSAM's rho-follows-lr schedule.

How the step calls a variant
----------------------------

`keras_sam.sam_step` is the contract, as code that every backend runs:
`sam_gradients` (the single-pass branch, `needs_second_pass` on the clean g
under an `ops.cond`, `epsilon` with `weight_selection` and the seed), then
`direction` (`combine` on the replica-mean g and gs, its state written only
where both are finite), and for a `decouples` variant (WSAM) `decoupled_shift`:
-lr `decoupled_update(g, gs)`, added to the weights after the optimizer's
update (not on a step that loss scaling skips). All methods are pure
`keras.ops` functions of tensors: g = clean gradient (unscaled, masked), gs =
gradient at w + eps, step = the value of `model.variant_step` (1 is added after
each update), state = the values of `model.variant_state` (Keras variables made
from `variant.state_shapes`, all starting at zero, saved with the model). With
micro-batches the decision and eps are per micro-batch and `combine` runs once,
on the averaged g and gs.
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

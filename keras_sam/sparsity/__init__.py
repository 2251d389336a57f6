"""Sparse overparameterization: pruning masks for Keras 3 models.

Masks live on the kernels as `KernelMask` constraints (non-trainable state,
saved with the model); pruned weights are zero in every forward pass and
after every optimizer step, and a SAM step masks its gradients and eps.

```python
from keras_sam import sparsity

model = keras_sam.sam(wide_model, rho=0.05)
model.compile("sgd", loss)
s = sparsity.sparsity_for_budget(small_model, model)   # same non-zero count
sparsity.prune_at_init(model, s, method="snip", data=(x[:256], y[:256]))
model.fit(x, y)
print(sparsity.sparsity_report(model))
plain = sparsity.strip_masks(model)                   # zeros baked in

# or gradual magnitude pruning with a TF-MOT schedule:
schedule = sparsity.tfmot_schedule("PolynomialDecay", initial_sparsity=0.0,
                                   final_sparsity=0.8, begin_step=0, end_step=1000)
model.fit(x, y, callbacks=[sparsity.GradualPruning(schedule)])
```
"""

from keras_sam.sparsity._masks import (
    PRUNABLE,
    KernelMask,
    LayerSparsity,
    Prunable,
    SparsityReport,
    kernel_masks,
    prunable_weights,
    sparsity_for_budget,
    sparsity_report,
    strip_masks,
)
from keras_sam.sparsity._pruning import (
    METHODS,
    GradualPruning,
    Schedule,
    load_tfmot,
    m_by_n_mask,
    prune_at_init,
    tfmot_schedule,
)

__all__ = [
    "METHODS",
    "PRUNABLE",
    "GradualPruning",
    "KernelMask",
    "LayerSparsity",
    "Prunable",
    "Schedule",
    "SparsityReport",
    "kernel_masks",
    "load_tfmot",
    "m_by_n_mask",
    "prunable_weights",
    "prune_at_init",
    "sparsity_for_budget",
    "sparsity_report",
    "strip_masks",
    "tfmot_schedule",
]

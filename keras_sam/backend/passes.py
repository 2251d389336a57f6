"""`Passes`: what a backend supplies to the SAM update (`keras_sam.sam_step`).

A backend subclasses `Passes` with its three passes (clean, perturbed,
single), its micro-batch loop, the optimizer call and, where it has
replicas, the replica reductions; the defaults here are one device's.

```python
class MyPasses(Passes):
    def clean(self, x, y, sample_weight): ...  # (g, y_pred, loss), updates state
    ...

logs = sam_step.train_step(model, MyPasses(model), data)
```
"""

from __future__ import annotations

from keras import ops

__all__ = ["Passes", "all_finite"]


class Passes:
    """What a backend supplies to `sam_step.train_step`. The passes return
    the gradient of the scaled loss (`optimizer.scale_loss`) and the loss as
    logged; the defaults are one device's (no replicas)."""

    def __init__(self, model):
        self.model = model

    def clean(self, x, y, sample_weight):
        """(grads at w, y_pred, loss), with the model's state updates."""
        raise NotImplementedError

    def perturbed(self, x, y, sample_weight, weights):
        """(grads at `weights`, loss) with the clean pass's state and
        randomness, writing nothing."""
        raise NotImplementedError

    def single(self, x, y, sample_weight, weights):
        """(grads at `weights`, y_pred, loss), with the state updates."""
        raise NotImplementedError

    def micro_batches(self, fn, data):
        """``fn(x, y, sample_weight) -> (Terms, y_pred)`` on each micro-batch
        of `data`, in order: (Terms averaged with weight size / batch, y_pred
        concatenated)."""
        raise NotImplementedError

    def apply(self, grads):
        """Hands the optimizer `grads` (scaled like the loss)."""
        raise NotImplementedError

    def weights(self):
        """The trainable weights' values, as constants of the step."""
        return [v.value for v in self.model.trainable_variables]

    def eps_gradients(self, grads):
        """The gradient eps is formed from (a replica reduction, or not)."""
        return grads

    def replica_mean(self, grads):
        """The global batch's gradient from this replica's."""
        return grads

    def replica_share(self, grads):
        """What this replica hands its optimizer for the global `grads`."""
        return grads

    def optimizer_gradients(self, grads):
        """This replica's gs as its optimizer takes it."""
        return grads

    def all_finite(self, tensors):
        """True where every tensor (on every replica) is finite."""
        return all_finite(tensors)

    def eps_batch_size(self, batch_size):
        """How many examples' gradient forms each eps."""
        return batch_size


def all_finite(tensors):
    """A boolean scalar: True where every tensor is finite."""
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))

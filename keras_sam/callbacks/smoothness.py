"""`SmoothnessEstimates`: smoothness and PL constants along the trajectory
(Shin, Lee, Andriushchenko, Lee 2023, arXiv 2311.17539, Fig. 21)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from keras_sam._validation import finite_float, non_empty_tuple, unit_fraction
from keras_sam.callbacks._base import CurvatureCallback, common_options
from keras_sam.hessian._operators import CurvatureOperator

__all__ = ["GAMMAS", "SmoothnessEstimates", "estimates"]

GAMMAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def _flat_weights(model) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(v.numpy(), np.float64).reshape(-1)
            for v in model.trainable_variables
        ]
    )


def _assign(model, flat: np.ndarray) -> None:
    start = 0
    for v in model.trainable_variables:
        size = int(np.prod(v.shape))
        v.assign(flat[start : start + size].reshape(v.shape).astype(v.dtype))
        start += size


def estimates(
    op: CurvatureOperator,
    x0: np.ndarray,
    x1: np.ndarray,
    gammas=GAMMAS,
    f_star: float = 0.0,
    g0: np.ndarray | None = None,
) -> dict[str, float]:
    """``beta_hat`` and ``alpha_hat`` on the segment from ``x0`` to ``x1``
    (flat weights), evaluated with ``op``'s model and data; the model's
    weights are left at ``x1``.

    With ``d = x1 - x0``:
    ``beta_hat = max_gamma ||g(x0 + gamma d) - g(x0)|| / ||gamma d||`` and
    ``alpha_hat = min_gamma ||g(x0 + gamma d)||^2 / (f(x0 + gamma d) - f*)``
    (Shin et al. 2023, arXiv 2311.17539, section 6.2; points with
    ``f <= f*`` are skipped).
    """
    model = op.model
    d = x1 - x0
    if g0 is None:
        _assign(model, x0)
        _, g0 = op.gradient()
    betas, alphas = [], []
    try:
        for gamma in gammas:
            _assign(model, x0 + gamma * d)
            f, g = op.gradient()
            step = np.linalg.norm(gamma * d)
            if step > 0:
                betas.append(np.linalg.norm(g - g0) / step)
            if f - f_star > 0:
                alphas.append(float(g @ g) / (f - f_star))
    finally:
        _assign(model, x1)
    return {
        "beta_hat": float(max(betas)) if betas else math.nan,
        "alpha_hat": float(min(alphas)) if alphas else math.nan,
    }


class SmoothnessEstimates(CurvatureCallback):
    """Logs smoothness and PL estimates along one optimizer step.

    For a step ``x_t -> x_{t+1}``, ``d = x_{t+1} - x_t``, on a fixed subset
    of ``data`` (f the mean loss there, g its gradient):

    - ``beta_hat = max_gamma ||g(x_t + gamma d) - g(x_t)|| / ||gamma d||``:
      smoothness (local Lipschitz constant of the gradient) along the step.
    - ``alpha_hat = min_gamma ||g(x_t + gamma d)||^2 / (f(x_t + gamma d) -
      f_star)``: Polyak-Lojasiewicz constant along the step.

    ``gamma`` runs over 0.1, 0.2, ..., 1 (11 gradient evaluations per
    estimate). With ``unit="epoch"`` the first step of every ``every``-th
    epoch is measured and logged in that epoch's logs (nothing in the others);
    with ``unit="step"``, every ``every``-th step, logged in its batch logs,
    the latest values in the epoch logs. With ``steps_per_execution > 1``
    a "step" is one execution. Every estimate of the current `fit` is
    appended to ``self.records``; each `fit` starts afresh.

    ```python
    cb = keras_sam.callbacks.SmoothnessEstimates((x, y), unit="step", every=50)
    model.fit(x, y, epochs=5, callbacks=[cb])
    ```

    Args:
        data: arrays or a `tf.data.Dataset` of batches (as `HessianMetrics`).
        num_examples: size of the fixed subset (1000 by default).
        seed: the seed that draws the subset.
        f_star: the optimal loss value (0 under interpolation).
        loss: as for `keras_sam.hessian.CurvatureOperator`.
        training: as for `keras_sam.hessian.CurvatureOperator`.
        batch_size: as for `keras_sam.hessian.CurvatureOperator`.
        prefix: put in front of the logged names.
    """

    config_names = ("f_star", "gammas")

    def __init__(
        self,
        data: Any,
        *,
        every: int = 1,
        unit: str = "epoch",
        num_examples: int | None = 1000,
        seed: int | None = 0,
        f_star: float = 0.0,
        gammas: tuple[float, ...] = GAMMAS,
        loss: Any = None,
        training: bool = False,
        batch_size: int | None = None,
        prefix: str = "",
    ):
        f_star = finite_float(f_star, "f_star")
        gammas = non_empty_tuple(gammas, "gammas", unit_fraction)
        super().__init__(data, **common_options(locals()))
        self.f_star = f_star
        self.gammas = gammas

    def _reset(self) -> None:
        super()._reset()
        self._start: tuple[np.ndarray, np.ndarray] | None = None

    def _names(self) -> list[str]:
        return ["beta_hat", "alpha_hat"]

    def _due(self, batch: int) -> bool:
        if self.unit == "step":
            return (self._step + 1) % self.every == 0
        return batch == 0 and (self._epoch + 1) % self.every == 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._due(batch):
            self._sync_weights()
            _, g0 = self._op().gradient()
            self._start = (_flat_weights(self.model), g0)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._start is None:
            return
        x0, g0 = self._start
        self._start = None
        self._sync_weights()
        values = estimates(
            self._op(), x0, _flat_weights(self.model), self.gammas, self.f_star, g0
        )
        step_logs = logs if self.unit == "step" else None
        self._publish(values, step_logs, step=self._step, epoch=self._epoch)

    def _epoch_values(self, epoch: int) -> dict[str, float]:
        return self._latest

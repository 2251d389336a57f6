"""`HessianMetrics`: sharpness, trace, non-uniformity and stability margins
logged during training."""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_sam._validation import boolean
from keras_sam.callbacks._base import CurvatureCallback, common_options
from keras_sam.hessian import measures, solvers

__all__ = ["HessianMetrics"]


class HessianMetrics(CurvatureCallback):
    """Logs curvature of the training loss on a fixed subset of ``data``.

    ```python
    cb = keras_sam.callbacks.HessianMetrics((x_train, y_train))  # sharpness
    cb = keras_sam.callbacks.HessianMetrics(
        (x_train, y_train), orders=(2,), trace=True, stability=True
    )
    history = model.fit(x_train, y_train, epochs=10, callbacks=[cb])
    history.history["sharpness"], history.history["stability_s2"]
    ```

    By default only ``sharpness`` is logged, on 256 examples, to a relative
    accuracy of 1e-3 (about 5-10 Hessian-vector products per evaluation,
    each costing about three gradients of those examples; the first
    evaluation also traces the product, about a second for an MLP). Logged
    names, each with ``prefix`` in front:

    - ``sharpness``: top eigenvalue of the Hessian H of the mean loss
      (Lanczos, warm-started from the previous evaluation's eigenvector).
    - ``trace``, ``trace_stderr`` (if ``trace``): Hutchinson estimate of
      tr(H) and its standard error (see `keras_sam.hessian.trace`).
    - ``s2``, ``s3``, ``s4``: non-uniformity ``lambda_max(M_k - H^k)^(1/k)``
      for each k in ``orders`` (per-example products: each costs about k
      times the examples' HVPs per Lanczos step).
    - ``stability_sharpness`` and ``stability_s2`` ... (if ``stability``):
      the necessary stability conditions of Theorem 6.3 of Shin, Lee,
      Andriushchenko, Lee (2023, arXiv 2311.17539) as ratios measured /
      bound (> 1: unstable), with the optimizer's current learning rate and
      the model's ``rho`` (0 for a non-SAM model); one per measured
      quantity. See `keras_sam.hessian.stability_ratios`.

    With ``unit="epoch"`` the values are computed after every ``every``-th
    epoch and logged in that epoch's logs (the other epochs log nothing:
    History's lists hold the measured epochs; ``records`` pairs each value
    with its epoch). With ``unit="step"`` they are computed after every
    ``every``-th training step, written into that step's batch logs, and
    the latest values go into each later epoch's logs. The data are checked
    against the model when `fit` starts (``on_train_begin``).
    Every evaluation of the current `fit` is appended to ``self.records``.
    Each `fit` starts afresh (``on_train_begin``), so the callback can be
    reused on another model.

    Args:
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or a
            `tf.data.Dataset` of batches.
        num_examples: size of the fixed subset (drawn with ``seed`` from
            arrays; the first examples of a dataset; default 256, for a
            cost of a few percent of an MNIST epoch); None for all.
        orders: non-uniformity orders among (2, 3, 4) to measure.
        trace: whether to estimate the trace.
        stability: whether to log stability ratios.
        trace_rtol: Hutchinson's stopping rule (relative standard error).
        trace_samples: Hutchinson's most probes.
        max_iter: Lanczos' most iterations.
        tol: relative accuracy of the Lanczos eigenvalue (see
            `keras_sam.hessian.sharpness`).
        loss: as for `keras_sam.hessian.CurvatureOperator`.
        training: as for `keras_sam.hessian.CurvatureOperator`.
        batch_size: as for `keras_sam.hessian.CurvatureOperator`.
        chunk_size: as for `keras_sam.hessian.CurvatureOperator`.
        regularization: as for `keras_sam.hessian.CurvatureOperator`.
    """

    config_names = (
        "orders",
        "trace",
        "stability",
        "trace_rtol",
        "trace_samples",
        "max_iter",
        "tol",
        "regularization",
        "chunk_size",
    )

    def __init__(
        self,
        data: Any,
        *,
        orders: tuple[int, ...] = (),
        trace: bool = False,
        stability: bool = False,
        trace_rtol: float = 0.05,
        trace_samples: int = 100,
        max_iter: int = 100,
        tol: float = 1e-3,
        loss: Any = None,
        training: bool = False,
        regularization: bool = False,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        every: int = 1,
        unit: str = "epoch",
        num_examples: int | None = 256,
        seed: int | None = 0,
        prefix: str = "",
    ):
        super().__init__(data, **common_options(locals()))
        self.orders = tuple(measures._check_order(k) for k in orders)
        self.trace = boolean(trace, "trace")
        self.stability = boolean(stability, "stability")
        self.regularization = boolean(regularization, "regularization")
        self.trace_rtol = trace_rtol
        self.trace_samples = trace_samples
        self.max_iter = max_iter
        self.tol = tol
        self.chunk_size = chunk_size
        if self.unit == "step":
            # Only then a batch hook: any on_train_batch_end makes Keras
            # dispatch every step's logs synchronously (a sync per step).
            self.on_train_batch_end = self._on_step_end

    def _reset(self) -> None:
        super()._reset()
        self._vectors: dict[Any, np.ndarray] = {}

    def _operator_options(self) -> dict[str, Any]:
        return {
            **super()._operator_options(),
            "chunk_size": self.chunk_size,
            "regularization": self.regularization,
        }

    def _names(self) -> list[str]:
        names = ["sharpness"]
        if self.trace:
            names += ["trace", "trace_stderr"]
        names += [f"s{k}" for k in self.orders]
        if self.stability:
            names += ["stability_sharpness"] + [f"stability_s{k}" for k in self.orders]
        return names

    def _eigen(self, key, measure, op, **options) -> float:
        # Top eigenvalue by ``measure`` (`measures.sharpness_estimate` or
        # `measures.non_uniformity_estimate`), warm-started from the previous
        # call's vector for ``key``; the first call from the measure's own
        # start (the Hessian's: the gradient; the moments': the Hessian's
        # top eigenvector, set in `_measure`).
        result = measure(
            op,
            max_iter=self.max_iter,
            tol=self.tol,
            v0=self._vectors.get(key),
            **options,
        )
        self._vectors[key] = result.eigenvectors[:, 0]
        return float(result.eigenvalues[0])

    def compute(self) -> dict[str, float]:
        """Measures everything now and returns ``{name: value}``."""
        return {self.prefix + k: v for k, v in self._measure().items()}

    def _measure(self) -> dict[str, float]:
        op = self._op()
        values = {"sharpness": self._eigen("H", measures.sharpness_estimate, op)}
        if self.trace:
            t = solvers.hutchinson(
                op.matvec,
                op.dim,
                self.trace_samples,
                rtol=self.trace_rtol,
                seed=self.seed,
            )
            values["trace"], values["trace_stderr"] = t.estimate, t.stderr
        s = {}
        for k in self.orders:
            if k not in self._vectors:
                # First call: from the Hessian's top eigenvector just found.
                self._vectors[k] = measures.hessian_start(self._vectors["H"], self.seed)
            gap = self._eigen(k, measures.non_uniformity_estimate, op, order=k)
            s[k] = measures.root(gap, k)
            values[f"s{k}"] = s[k]
        if self.stability:
            lr = measures.current_learning_rate(self.model)
            rho = float(getattr(self.model, "rho", 0.0))
            ratios = measures.stability_ratios(
                lr, rho, values["sharpness"], s.get(2), s.get(3), s.get(4)
            )
            values.update({f"stability_{k}": v for k, v in ratios.items()})
        return {k: float(v) for k, v in values.items()}

    def _epoch_values(self, epoch: int) -> dict[str, float]:
        return self._publish(self._measure(), None, epoch=epoch)

    def _on_step_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self._sync_weights()
            self._publish(self._measure(), logs, step=self._step)

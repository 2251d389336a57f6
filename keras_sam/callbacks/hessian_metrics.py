"""`HessianMetrics`: sharpness, trace, non-uniformity and stability margins
logged during training."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from keras_sam.callbacks._common import check_schedule, subset
from keras_sam.hessian import measures, solvers
from keras_sam.hessian._operators import CurvatureOperator


class HessianMetrics(keras.callbacks.Callback):
    """Logs curvature of the training loss on a fixed subset of ``data``.

    ```python
    cb = keras_sam.callbacks.HessianMetrics((x_train, y_train), orders=(2, 3, 4))
    history = model.fit(x_train, y_train, epochs=10, callbacks=[cb])
    history.history["sharpness"], history.history["stability_s2"]
    ```

    Logged names (each with ``prefix`` in front):

    - ``sharpness``: top eigenvalue of the Hessian H of the mean loss
      (Lanczos, warm-started from the previous evaluation's eigenvector).
    - ``trace``, ``trace_stderr``: Hutchinson estimate of tr(H) and its
      standard error (if ``trace``).
    - ``s2``, ``s3``, ``s4``: non-uniformity ``lambda_max(M_k - H^k)^(1/k)``
      for each k in ``orders``.
    - ``stability_sharpness``, ``stability_s2``, ``stability_s3``,
      ``stability_s4``: Theorem 6.3's necessary stability conditions as
      ratios measured / bound (> 1: unstable), with the optimizer's current
      learning rate and the model's ``rho`` (0 for a non-SAM model); one per
      measured quantity (if ``stability``). See
      `keras_sam.hessian.stability_ratios`.

    With ``unit="epoch"`` the values are computed after every ``every``-th
    epoch and logged in that epoch's logs (NaN in the other epochs, so
    History and CSVLogger columns stay aligned). With ``unit="step"`` they
    are computed after every ``every``-th training step, written into that
    step's batch logs, and the latest values go into each epoch's logs.
    Every evaluation is also appended to ``self.records``.

    Args:
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or a
            `tf.data.Dataset` of batches.
        num_examples: size of the fixed subset (drawn with ``seed`` from
            arrays; the first examples of a dataset); None for all.
        orders: non-uniformity orders among (2, 3, 4) to measure.
        trace: whether to estimate the trace.
        stability: whether to log stability ratios.
        trace_samples: Hutchinson probes.
        max_iter, tol: Lanczos limits (relative residual tolerance).
        loss, training, batch_size, chunk_size: as for
            `keras_sam.hessian.CurvatureOperator`.
    """

    def __init__(
        self,
        data: Any,
        *,
        every: int = 1,
        unit: str = "epoch",
        num_examples: int | None = 1000,
        seed: int | None = 0,
        orders: tuple[int, ...] = (2,),
        trace: bool = True,
        stability: bool = True,
        trace_samples: int = 50,
        max_iter: int = 100,
        tol: float = 1e-3,
        loss: Any = None,
        training: bool = False,
        batch_size: int | None = None,
        chunk_size: int = 16,
        prefix: str = "",
    ):
        super().__init__()
        self.every, self.unit = check_schedule(every, unit)
        self.orders = tuple(measures._check_order(k) for k in orders)
        for name, value in (("trace", trace), ("stability", stability)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        if not isinstance(prefix, str):
            raise ValueError(f"`prefix` must be a string, got {prefix!r}.")
        self.data = subset(data, num_examples, seed)
        self.num_examples = num_examples
        self.seed = seed
        self.trace = trace
        self.stability = stability
        self.trace_samples = trace_samples
        self.max_iter = max_iter
        self.tol = tol
        self.loss = loss
        self.training = training
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.prefix = prefix
        self.records: list[dict[str, float]] = []
        self._operator: CurvatureOperator | None = None
        self._vectors: dict[Any, np.ndarray] = {}
        self._latest: dict[str, float] = {}
        self._step = 0

    def names(self) -> list[str]:
        """The names this callback logs, prefix included."""
        names = ["sharpness"]
        if self.trace:
            names += ["trace", "trace_stderr"]
        names += [f"s{k}" for k in self.orders]
        if self.stability:
            names += ["stability_sharpness"] + [f"stability_s{k}" for k in self.orders]
        return [self.prefix + n for n in names]

    def _op(self) -> CurvatureOperator:
        if self._operator is None:
            self._operator = CurvatureOperator(
                self.model,
                self.data,
                loss=self.loss,
                training=self.training,
                batch_size=self.batch_size,
                chunk_size=self.chunk_size,
            )
        return self._operator

    def _eigen(self, key, matvec, dim) -> float:
        result = solvers.lanczos(
            matvec, dim, max_iter=self.max_iter, tol=self.tol, v0=self._vectors.get(key)
        )
        self._vectors[key] = result.eigenvectors[:, 0]
        return float(result.eigenvalues[0])

    def compute(self) -> dict[str, float]:
        """Measures everything now and returns ``{name: value}``."""
        op = self._op()
        values = {"sharpness": self._eigen("H", op.hvp, op.dim)}
        if self.trace:
            t = solvers.hutchinson(op.hvp, op.dim, self.trace_samples, seed=self.seed)
            values["trace"], values["trace_stderr"] = t.estimate, t.stderr
        s = {}
        for k in self.orders:
            gap = self._eigen(k, lambda v, k=k: op.moment_gap(v, k), op.dim)
            s[k] = measures.root(gap, k)
            values[f"s{k}"] = s[k]
        if self.stability:
            lr = measures.current_learning_rate(self.model)
            rho = float(getattr(self.model, "rho", 0.0))
            ratios = measures.stability_ratios(
                lr, rho, values["sharpness"], s.get(2), s.get(3), s.get(4)
            )
            values.update({f"stability_{k}": v for k, v in ratios.items()})
        return {self.prefix + k: float(v) for k, v in values.items()}

    def _record(self, logs, **where):
        values = self.compute()
        self._latest = values
        self.records.append({**where, **values})
        if logs is not None:
            logs.update(values)

    def on_train_batch_end(self, batch, logs=None):
        if self.unit != "step":
            return
        self._step += 1
        if self._step % self.every == 0:
            self._record(logs, step=self._step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.unit == "epoch":
            if (epoch + 1) % self.every == 0:
                self._record(logs, epoch=epoch)
            else:
                logs.update({name: math.nan for name in self.names()})
        else:
            logs.update(self._latest or {name: math.nan for name in self.names()})

    def get_config(self) -> dict[str, Any]:
        """The options (not the data)."""
        return {
            "every": self.every,
            "unit": self.unit,
            "num_examples": self.num_examples,
            "seed": self.seed,
            "orders": self.orders,
            "trace": self.trace,
            "stability": self.stability,
            "trace_samples": self.trace_samples,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "training": self.training,
            "batch_size": self.batch_size,
            "chunk_size": self.chunk_size,
            "prefix": self.prefix,
        }

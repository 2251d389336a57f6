"""Does SAM help on *your* model and data? The base optimizer and SAM side by
side, for the same budget.

```python
from keras_sam.study import compare
result = compare.compare(model, (x, y), (x_test, y_test), epochs=10, rho=0.05)
result.table()        # test metrics, sharpness, wall time, passes per step
compare.plot(result, "compare.png")
```

or from the shell, on a saved model and an ``.npz`` of arrays::

    keras-sam compare model.keras --data data.npz --epochs 10 --rho 0.05

Both arms start from the same weights (the model as given), see the batches
in the same order (one seed), and train for the same number of epochs with
the same optimizer settings; the SAM arm wraps the model with
`keras_sam.sam` (optionally a variant). Reported per arm: the model's own
metrics on the test data (its compiled loss and metrics), the sharpness
lambda_max of the training loss's Hessian at the end (on up to
`sharpness_examples` training examples, `keras_sam.hessian.sharpness`),
the training's wall time, the median time of an epoch after the first
(which includes tracing) and its forward-backward passes per step.

Wall times on a shared machine swing; the ratio between the two arms, run
one after the other here, is the number to read, and only roughly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
import warnings
from typing import Any

import keras
import numpy as np

import keras_sam
from keras_sam import _validation, hessian
from keras_sam.study.variant_options import variant_for_training


@dataclasses.dataclass
class Arm:
    """One training run of the comparison."""

    name: str
    test: dict[str, float]
    sharpness: float
    seconds: float
    epoch_seconds: float
    passes_per_step: float
    train_loss: list[float]


@dataclasses.dataclass
class Comparison:
    """The base optimizer's run and SAM's, with the settings they shared."""

    base: Arm
    sam: Arm
    settings: dict[str, Any]

    def table(self) -> str:
        """The side-by-side table (as `keras-sam compare` prints it)."""
        rows = [("", self.base.name, self.sam.name)]
        for key in self.base.test:
            rows.append(
                (f"test {key}", _fmt(self.base.test[key]), _fmt(self.sam.test[key]))
            )
        rows.append(("sharpness", _fmt(self.base.sharpness), _fmt(self.sam.sharpness)))
        rows.append(
            ("wall time (s)", f"{self.base.seconds:.1f}", f"{self.sam.seconds:.1f}")
        )
        ratio = self.sam.epoch_seconds / self.base.epoch_seconds
        rows.append(
            (
                "s / epoch",
                f"{self.base.epoch_seconds:.3g}",
                f"{self.sam.epoch_seconds:.3g} ({ratio:.2f}x)",
            )
        )
        rows.append(
            (
                "passes / step",
                f"{self.base.passes_per_step:.2f}",
                f"{self.sam.passes_per_step:.2f}",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}"
            for r in rows
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _steps_per_epoch(x: Any, batch_size: int) -> int:
    first = keras.tree.flatten(x)[0]
    return math.ceil(len(first) / batch_size)


def _subset(data: tuple, count: int) -> tuple:
    return keras.tree.map_structure(lambda a: a[:count], data)


def compare(
    model: keras.Model,
    train: tuple,
    test: tuple,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    rho: float = 0.05,
    variant: Any = None,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Any = None,
    seed: int = 0,
    sharpness_examples: int = 512,
    verbose: int = 0,
) -> Comparison:
    """Trains copies of `model` with the base optimizer and with SAM.

    Args:
        model: a built Keras model, as training should start from. If it is
            compiled, its compile settings are used; else pass `loss` (and
            `optimizer`, default SGD(0.01, momentum=0.9), and `metrics`).
        train, test: ``(x, y)`` arrays (or nested structures of arrays).
        epochs, batch_size: the budget, the same for both arms.
        rho, variant: SAM's options (`keras_sam.sam`); "latesam" and
            "earlysam" get the training's step count.
        seed: one seed for both arms (shuffling, dropout).
        sharpness_examples: training examples the sharpness is measured on
            (0: not measured).

    Returns:
        A `Comparison`; `comparison.table()` is the printed table.
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("`model` must be a built keras.Model.")
    for name, value in (("train", train), ("test", test)):
        if not (isinstance(value, tuple | list) and len(value) == 2):
            raise ValueError(f"`{name}` must be an (x, y) pair, got {type(value)}.")
    epochs = _validation.positive_int(epochs, "epochs")
    batch_size = _validation.positive_int(batch_size, "batch_size")
    if not model.compiled and loss is None:
        raise ValueError(
            "`model` is not compiled: pass `loss` (and `optimizer`, `metrics`)."
        )
    total_steps = epochs * _steps_per_epoch(train[0], batch_size)
    sam_variant = variant_for_training(variant, total_steps)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "rho": rho,
        "variant": repr(sam_variant),
        "seed": seed,
        "steps": total_steps,
        "backend": keras.backend.backend(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "start.keras")
        model.save(path)
        arms = []
        for use_sam in (False, True):
            # Random layers (dropout) draw their seeds when built: the same
            # seeds in both copies.
            keras.utils.set_random_seed(seed)
            with warnings.catch_warnings():
                # "Skipping variable loading for optimizer": the saved
                # optimizer is unbuilt; each arm's builds anew.
                warnings.filterwarnings("ignore", message="Skipping variable loading")
                copy = keras.models.load_model(path, compile=model.compiled)
            if not model.compiled or optimizer is not None:
                copy.compile(
                    optimizer=_fresh_optimizer(optimizer),
                    loss=loss or copy.loss,
                    metrics=metrics,
                )
            trained = copy
            if use_sam:
                trained = keras_sam.sam(copy, rho=rho, variant=sam_variant)
            arms.append(
                _train_arm(
                    trained,
                    copy,
                    train,
                    test,
                    epochs=epochs,
                    batch_size=batch_size,
                    seed=seed,
                    total_steps=total_steps,
                    sharpness_examples=sharpness_examples,
                    verbose=verbose,
                    name=_arm_name(copy, use_sam, rho, sam_variant),
                )
            )
    return Comparison(base=arms[0], sam=arms[1], settings=settings)


def _fresh_optimizer(optimizer):
    # Each arm gets its own optimizer (state, iterations).
    if optimizer is None:
        return keras.optimizers.SGD(0.01, momentum=0.9)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return type(optimizer).from_config(optimizer.get_config())
    return keras.optimizers.get(optimizer)


def _arm_name(model, use_sam, rho, variant) -> str:
    if not use_sam:
        return type(model.optimizer).__name__
    label = "SAM" if variant is None else type(variant).__name__
    return f"{label} (rho={rho:g})"


def _train_arm(
    trained,
    plain,
    train,
    test,
    *,
    epochs,
    batch_size,
    seed,
    total_steps,
    sharpness_examples,
    verbose,
    name,
) -> Arm:
    keras.utils.set_random_seed(seed)
    timer = _EpochTimer()
    start = time.perf_counter()
    history = trained.fit(
        *train,
        epochs=epochs,
        batch_size=batch_size,
        verbose=verbose,
        callbacks=[timer],
    )
    seconds = time.perf_counter() - start
    # The first epoch includes tracing / compiling: the median of the others.
    later = timer.seconds[1:] or timer.seconds
    scores = plain.evaluate(
        *test, batch_size=max(batch_size, 256), verbose=0, return_dict=True
    )
    sharp = float("nan")
    if sharpness_examples:
        sharp = hessian.sharpness(plain, _subset(tuple(train), sharpness_examples))
    passes = getattr(trained, "gradient_passes", float(total_steps)) / total_steps
    return Arm(
        name=name,
        test={k: float(v) for k, v in scores.items()},
        sharpness=float(sharp),
        seconds=seconds,
        epoch_seconds=float(np.median(later)),
        passes_per_step=passes,
        train_loss=[float(v) for v in history.history["loss"]],
    )


def plot(result: Comparison, path: str) -> str:
    """A PNG: training loss per epoch of both arms, and bars of the first
    test metric, the sharpness and the wall time."""
    from keras_sam.study.sweep.plots import _pyplot

    plt = _pyplot()
    arms = (result.base, result.sam)
    metric = next(iter(result.base.test))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for arm in arms:
        axes[0].plot(range(1, len(arm.train_loss) + 1), arm.train_loss, label=arm.name)
    axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log")
    axes[0].legend()
    panels = [
        (f"test {metric}", [a.test[metric] for a in arms]),
        ("sharpness (lambda_max)", [a.sharpness for a in arms]),
        ("wall time (s)", [a.seconds for a in arms]),
    ]
    for ax, (title, values) in zip(axes[1:], panels):
        ax.bar([a.name for a in arms], values, color=["tab:blue", "tab:orange"])
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_npz(path: str) -> tuple[tuple, tuple]:
    """(x_train, y_train), (x_test, y_test) from an ``.npz`` with those keys."""
    arrays = np.load(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
    if missing:
        raise ValueError(
            f"`data` {path!r} must hold arrays x_train, y_train, x_test, y_test; "
            f"missing {sorted(missing)} (it has {sorted(arrays.files)})."
        )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def write(result: Comparison, out_dir: str, plots: bool = True) -> list[str]:
    """compare.json (and compare.png) in `out_dir`; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "compare.json")]
    with open(paths[0], "w") as f:
        json.dump(result.to_dict(), f, indent=2)
    if plots:
        paths.append(plot(result, os.path.join(out_dir, "compare.png")))
    return paths

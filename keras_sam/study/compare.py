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
`keras_sam.sam` (optionally a variant). Every setting used (epochs, batch
size, optimizer and learning rate, loss, rho, variant, seed) is printed
with the table, saved in the JSON and written on the plot.

An arm whose training loss becomes non-finite or exceeds
`DIVERGENCE_FACTOR` times the starting loss has diverged: the table says
so in capitals, the JSON lists it under ``"diverged"``, and the command
exits with status 1. Reported per arm: the model's own
metrics on the test data (its compiled loss and metrics), the sharpness
lambda_max of the training loss's Hessian at the end (on up to
`sharpness_examples` training examples, `keras_sam.hessian.sharpness`),
the training's wall time, the median time of an epoch after the first
(which includes tracing) and its forward-backward passes per step.

Wall times on a shared machine swing; the ratio between the two arms, run
one after the other here, is the number to read, and only roughly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import textwrap
import time
import warnings
from typing import Any

import keras
import numpy as np

import keras_sam
from keras_sam import _validation, hessian
from keras_sam.study.variant_options import variant_for_training

#: An arm diverged when a training loss exceeds this many times the loss of
#: the starting weights (or is not finite).
DIVERGENCE_FACTOR = 10.0


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
    diverged: str | None = None  # why, when it did


@dataclasses.dataclass
class Comparison:
    """The base optimizer's run and SAM's, with the settings they shared."""

    base: Arm
    sam: Arm
    settings: dict[str, Any]

    @property
    def diverged(self) -> list[str]:
        """The names of the arms that diverged."""
        return [arm.name for arm in (self.base, self.sam) if arm.diverged]

    def settings_line(self) -> str:
        """Every setting both arms used, in one line."""
        s = self.settings
        return (
            f"{s['epochs']} epochs, batch size {s['batch_size']} ({s['steps']} "
            f"steps), optimizer {s['optimizer']}, loss {s['loss']}, rho {s['rho']:g}"
            f", variant {s['variant']}, seed {s['seed']}, backend {s['backend']}, "
            f"starting training loss {_fmt(s['start_loss'])}"
        )

    def table(self) -> str:
        """The side-by-side table (as `keras-sam compare` prints it): the
        settings, the rows, and a warning per diverged arm."""
        rows = [("", self.base.name, self.sam.name)]
        status = ["DIVERGED" if arm.diverged else "ok" for arm in (self.base, self.sam)]
        rows.append(("training", *status))
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
        lines = [f"settings: {self.settings_line()}"]
        lines += [
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}"
            for r in rows
        ]
        for arm in (self.base, self.sam):
            if arm.diverged:
                lines.append(
                    f"WARNING: {arm.name} DIVERGED ({arm.diverged}): its test "
                    "numbers and sharpness describe a broken model."
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: settings, both arms, and ``diverged`` (names)."""
        return {**dataclasses.asdict(self), "diverged": self.diverged}


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def divergence(train_loss: list[float], start_loss: float | None) -> str | None:
    """Why a run with these epoch losses diverged, or None: a non-finite
    loss, or one above `DIVERGENCE_FACTOR` x ``start_loss`` (when known)."""
    known = start_loss is not None and math.isfinite(start_loss)
    limit = DIVERGENCE_FACTOR * abs(start_loss) if known else None
    for epoch, loss in enumerate(train_loss, start=1):
        if not math.isfinite(loss):
            return f"training loss {loss} at epoch {epoch}"
        if limit is not None and loss > limit:
            return (
                f"training loss {loss:.3g} at epoch {epoch}, over "
                f"{DIVERGENCE_FACTOR:g}x the starting {start_loss:.3g}"
            )
    return None


def describe_loss(loss: Any) -> str:
    """A loss as the settings show it, with its options (``from_logits``)."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        options = [
            f"{key}={config[key]!r}"
            for key in ("from_logits", "label_smoothing")
            if key in config and (key == "from_logits" or config[key])
        ]
        return f"{type(loss).__name__}({', '.join(options)})"
    return getattr(loss, "__name__", repr(loss))


def describe_optimizer(optimizer: keras.optimizers.Optimizer) -> str:
    """An optimizer as the settings show it: its class, learning rate and
    the options that shape its step."""
    config = optimizer.get_config()
    parts = [f"lr {_fmt(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))}"]
    for key in ("momentum", "nesterov", "beta_1", "beta_2", "weight_decay"):
        if config.get(key) not in (None, False, 0, 0.0):
            parts.append(f"{key} {config[key]:g}" if key != "nesterov" else key)
    return f"{type(optimizer).__name__} ({', '.join(parts)})"


def loss_from_spec(spec: str | None, from_logits: bool | None = None) -> Any:
    """A Keras loss from the command line's ``--loss`` / ``--from-logits``.

    ``spec``: a loss name (``"sparse_categorical_crossentropy"`` or
    ``"SparseCategoricalCrossentropy"``) or a serialized loss as JSON
    (``'{"class_name": "SparseCategoricalCrossentropy", "config":
    {"from_logits": true}}'``); None: the model's saved loss.

    Returns:
        None (no spec), a `keras.losses.Loss`, or the name as given.

    Raises:
        ValueError: an unknown loss, bad JSON, or ``from_logits`` for a loss
            that has no such option.
    """
    if spec is None:
        if from_logits:
            raise ValueError(
                "`--from-logits` needs `--loss NAME`: the loss it applies to."
            )
        return None
    text = spec.strip()
    if text.startswith("{"):
        if from_logits is not None:
            raise ValueError(
                "`--from-logits` goes with a loss name; in a JSON `--loss` put "
                '"from_logits" in its "config".'
            )
        try:
            return keras.losses.deserialize(json.loads(text))
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"`loss` JSON must be a serialized Keras loss, e.g. "
                '{"class_name": "SparseCategoricalCrossentropy", "config": '
                f'{{"from_logits": true}}}}, got loss={spec!r} ({error}).'
            ) from error
    class_name = "".join(part.capitalize() for part in text.split("_"))
    if "_" not in text and text[:1].isupper():
        class_name = text
    try:
        # A class name gives an instance of the class, a snake name a function.
        loss_class = type(keras.losses.get(class_name))
    except ValueError:
        loss_class = None
    if loss_class is None or not issubclass(loss_class, keras.losses.Loss):
        try:
            keras.losses.get(text)  # a function: fine without options
        except ValueError:
            raise ValueError(
                "`loss` must be a Keras loss name (e.g. "
                "sparse_categorical_crossentropy, mse) or a serialized loss as "
                f"JSON, got loss={spec!r}."
            ) from None
        if from_logits is not None:
            raise ValueError(
                f"`--from-logits` needs a loss with a from_logits option, "
                f"got loss={spec!r}."
            )
        return text
    if from_logits is None:
        return loss_class()
    try:
        return loss_class(from_logits=bool(from_logits))
    except TypeError:
        raise ValueError(
            f"`--from-logits` needs a loss with a from_logits option, got "
            f"loss={spec!r}."
        ) from None


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
        optimizer, loss, metrics: replace the compiled ones (each arm gets
            a fresh optimizer); the compiled metrics stay unless `metrics`
            is given.
        seed: one seed for both arms (shuffling, dropout).
        sharpness_examples: training examples the sharpness is measured on
            (0: not measured).

    Returns:
        A `Comparison`; `comparison.table()` is the printed table.
    """
    epochs, batch_size = _checked_inputs(model, train, test, epochs, batch_size, loss)
    total_steps = epochs * _steps_per_epoch(train[0], batch_size)
    sam_variant = variant_for_training(variant, total_steps)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "rho": rho,
        "variant": "SAM" if sam_variant is None else repr(sam_variant),
        "seed": seed,
        "steps": total_steps,
        "backend": keras.backend.backend(),
    }
    with fresh_copies(model, seed, optimizer, loss, metrics) as fresh_copy:
        # The settings and the starting loss (the divergence yardstick) from
        # a copy of their own: the arms' copies are only trained.
        probe = fresh_copy()
        settings.update(
            optimizer=describe_optimizer(probe.optimizer),
            learning_rate=float(
                keras.ops.convert_to_numpy(probe.optimizer.learning_rate)
            ),
            loss=describe_loss(probe.loss),
            start_loss=_start_loss(probe, train, batch_size),
        )
        del probe
        arms = []
        for use_sam in (False, True):
            copy = fresh_copy()
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
                    start_loss=settings["start_loss"],
                )
            )
    return Comparison(base=arms[0], sam=arms[1], settings=settings)


def _checked_inputs(model, train, test, epochs, batch_size, loss) -> tuple[int, int]:
    """`compare`'s (and `search_rho`'s) argument checks; returns the checked
    ``(epochs, batch_size)``."""
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
    return epochs, batch_size


@contextlib.contextmanager
def fresh_copies(model, seed, optimizer=None, loss=None, metrics=None):
    """Yields a function that returns a new copy of `model` as it is now
    (weights and, where compiled, its compile settings, with `optimizer`,
    `loss` and `metrics` replacing theirs), each with the same seeds."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "start.keras")
        model.save(path)

        def fresh_copy():
            # Random layers (dropout) draw their seeds when built: the same
            # seeds in every copy.
            keras.utils.set_random_seed(seed)
            with warnings.catch_warnings():
                # "Skipping variable loading for optimizer": the saved
                # optimizer is unbuilt; each copy's builds anew.
                warnings.filterwarnings("ignore", message="Skipping variable loading")
                copy = keras.models.load_model(path, compile=model.compiled)
            if not model.compiled or optimizer is not None or loss is not None:
                _recompile(copy, model.compiled, optimizer, loss, metrics)
            return copy

        yield fresh_copy


def _recompile(copy, compiled, optimizer, loss, metrics) -> None:
    """Compiles `copy` with the given optimizer / loss / metrics; what is
    not given comes from its saved compile config (metrics included)."""
    saved = copy.get_compile_config() if compiled else None
    saved = saved or {}
    if metrics is None and saved.get("metrics") is not None:
        metrics = keras.tree.map_structure(
            lambda m: keras.metrics.deserialize(m) if isinstance(m, dict) else m,
            saved["metrics"],
        )
    if optimizer is None and compiled:
        optimizer = copy.optimizer  # the saved one, fresh for this arm
    copy.compile(
        optimizer=_fresh_optimizer(optimizer),
        loss=loss if loss is not None else copy.loss,
        metrics=metrics,
    )


def _start_loss(model, train, batch_size) -> float:
    """The training loss of the starting weights (the divergence yardstick)."""
    scores = model.evaluate(
        *train, batch_size=max(batch_size, 256), verbose=0, return_dict=True
    )
    return float(scores["loss"])


def default_optimizer() -> keras.optimizers.Optimizer:
    """The optimizer of an uncompiled model: SGD(0.01, momentum=0.9)."""
    return keras.optimizers.SGD(0.01, momentum=0.9)


def _fresh_optimizer(optimizer):
    # Each arm gets its own optimizer (state, iterations).
    if optimizer is None:
        return default_optimizer()
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
    start_loss=None,
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
    train_loss = [float(v) for v in history.history["loss"]]
    diverged = divergence(train_loss, start_loss)
    if diverged is None and not all(math.isfinite(float(v)) for v in scores.values()):
        diverged = "non-finite test scores"
    sharp = float("nan")
    if sharpness_examples and diverged is None:
        sharp = hessian.sharpness(plain, _subset(tuple(train), sharpness_examples))
    passes = getattr(trained, "gradient_passes", float(total_steps)) / total_steps
    return Arm(
        name=name,
        test={k: float(v) for k, v in scores.items()},
        sharpness=float(sharp),
        seconds=seconds,
        epoch_seconds=float(np.median(later)),
        passes_per_step=passes,
        train_loss=train_loss,
        diverged=diverged,
    )


def plot(result: Comparison, path: str) -> str:
    """A PNG: training loss per epoch of both arms, and bars (labelled with
    their values) of the test loss, the first other test metric, the
    sharpness and the wall time; the settings as its title, a diverged arm
    marked in red."""
    from keras_sam.study.sweep.plots import subplots

    arms = (result.base, result.sam)
    names = [a.name + (" DIVERGED" if a.diverged else "") for a in arms]
    others = [k for k in result.base.test if k != "loss"]
    panels = [("test loss", [a.test.get("loss", math.nan) for a in arms])]
    panels += [(f"test {k}", [a.test[k] for a in arms]) for k in others[:1]]
    panels += [
        ("sharpness (lambda_max)", [a.sharpness for a in arms]),
        ("wall time (s)", [a.seconds for a in arms]),
    ]
    fig, axes = subplots(1, 1 + len(panels), figsize=(3.6 * (1 + len(panels)), 3.6))
    for arm, name in zip(arms, names):
        epochs = range(1, len(arm.train_loss) + 1)
        axes[0].plot(epochs, arm.train_loss, marker=".", label=name)
    start = result.settings.get("start_loss")
    if start is not None and math.isfinite(start):
        axes[0].axhline(start, color="gray", lw=0.8, ls=":", label="start")
    axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log")
    axes[0].legend(fontsize=7)
    colors = [
        "tab:red" if a.diverged else c for a, c in zip(arms, ("tab:blue", "tab:orange"))
    ]
    for ax, (title, values) in zip(axes[1:], panels):
        shown = [v if math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(names, shown, color=colors)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
        ax.set_title(title)
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(_wrap(result.settings_line(), 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


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

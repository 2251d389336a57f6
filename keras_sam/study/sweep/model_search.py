"""Find rho for *your* model: the base optimizer once, then SAM at each rho
of a small grid, extended by a factor of 2 past whichever edge holds the best
(`keras_sam.study.sweep.rho_search.decide`), until the best is interior.

```python
from keras_sam.study import search_rho
result = search_rho(model, (x, y), (x_test, y_test), epochs=10)
print(result.table())       # every arm; the best rho and the verdict
result.best_rho             # e.g. 0.1
```

or ``keras-sam compare model.keras --data data.npz --rho auto``.

Every arm starts from the model's weights and sees the same batches (one
seed), as in `keras_sam.study.compare`; the decision is on the test metric
(one seed: a single run per rho, so differences of the size of the
seed-to-seed noise decide nothing; repeat with other seeds to see it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import keras

import keras_sam
from keras_sam import _validation
from keras_sam.study import compare
from keras_sam.study.sweep.rho_search import (
    Decision,
    RhoPoint,
    SearchOptions,
    canonical_rho,
    decide,
)
from keras_sam.study.variant_options import variant_for_training

DEFAULT_RHOS = (0.025, 0.05, 0.1)
_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "mean_squared", "mean_absolute")


@dataclasses.dataclass
class RhoSearchResult:
    """The base optimizer's run, SAM's run at every rho tried, the metric
    the search ranked them on and its decision (best rho, verdict)."""

    base: compare.Arm
    arms: dict[float, compare.Arm]
    metric: str
    higher_is_better: bool
    decision: Decision
    settings: dict[str, Any]

    @property
    def best_rho(self) -> float | None:
        return self.decision.best_rho

    @property
    def diverged(self) -> list[str]:
        """The names of the arms whose training loss diverged (see
        `keras_sam.study.compare.Comparison.diverged`)."""
        arms = [self.base, *(self.arms[r] for r in sorted(self.arms))]
        return [arm.name for arm in arms if getattr(arm, "diverged", None)]

    def table(self) -> str:
        """One row per arm: the metric, its gap over the base optimizer,
        sharpness, wall time and passes per step; then the verdict."""
        sign = 1.0 if self.higher_is_better else -1.0
        base_value = self.base.test[self.metric]
        rows = [
            ("", f"test {self.metric}", "gap", "sharpness", "wall (s)", "passes"),
            _row(self.base, self.metric, "", ""),
        ]
        for rho in sorted(self.arms):
            arm = self.arms[rho]
            gap = sign * (arm.test[self.metric] - base_value)
            mark = "  <- best" if rho == self.best_rho else ""
            rows.append(_row(arm, self.metric, f"{gap:+.4g}", mark))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [
            "  ".join(
                f"{cell:<{widths[0]}}" if i == 0 else f"{cell:>{widths[i]}}"
                for i, cell in enumerate(row[:6])
            )
            + (row[6] if len(row) > 6 else "")
            for row in rows
        ]
        verdict = self.decision.verdict
        if self.decision.note:
            verdict += f" ({self.decision.note})"
        best = "none" if self.best_rho is None else f"{self.best_rho:g}"
        lines.append(
            f"best rho {best}: {verdict}; gap = SAM better than "
            f"{self.base.name} > 0, on test {self.metric}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": dataclasses.asdict(self.base),
            "arms": {f"{r:g}": dataclasses.asdict(a) for r, a in self.arms.items()},
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "best_rho": self.best_rho,
            "verdict": self.decision.verdict,
            "note": self.decision.note,
            "settings": self.settings,
        }


def _row(arm, metric, gap, mark):
    return (
        arm.name,
        compare._fmt(arm.test[metric]),
        gap,
        compare._fmt(arm.sharpness),
        f"{arm.seconds:.1f}",
        f"{arm.passes_per_step:.2f}",
        mark,
    )


def _metric(test: dict[str, float], metric: str | None) -> str:
    if metric is None:
        named = [k for k in test if k != "loss"]
        return next((k for k in named if "acc" in k), named[0] if named else "loss")
    if metric not in test:
        raise ValueError(
            f"`metric` must be one of the model's test metrics {sorted(test)}, "
            f"got metric={metric!r}."
        )
    return metric


def _arm_point(rho: float, arm, base_value, metric, sign) -> RhoPoint:
    value = arm.test[metric]
    loss = arm.train_loss
    diverged = None
    if not math.isfinite(value):
        diverged = "non-finite metric"
    elif any(not math.isfinite(v) for v in loss):
        diverged = "non-finite loss"
    elif len(loss) > 1 and loss[-1] > loss[0]:
        diverged = "loss exploded"
    return RhoPoint(rho, sign * (value - base_value), value, 1, diverged)


def search_rho(
    model: keras.Model,
    train: tuple,
    test: tuple,
    *,
    rhos: Sequence[float] = DEFAULT_RHOS,
    max_extensions: int = 4,
    min_rho: float | None = None,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    variant: Any = None,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Any = None,
    seed: int = 0,
    sharpness_examples: int = 512,
    verbose: int = 0,
) -> RhoSearchResult:
    """Trains `model` with its optimizer once and with SAM at each rho of
    `rhos`, extending the grid x2 past whichever edge holds the best rho
    (at most `max_extensions` times, down to `min_rho`), until the best is
    interior, diverges past it, or SAM gains nothing at the lowest rho.

    Args:
        model: as in `keras_sam.study.compare.compare`.
        train: as in `keras_sam.study.compare.compare`.
        test: as in `keras_sam.study.compare.compare`.
        rhos: the starting grid (positive).
        max_extensions: the most times the grid is extended
            (`keras_sam.study.sweep.rho_search.SearchOptions`).
        min_rho: the lowest rho an extension may reach (`SearchOptions`).
        metric: the test metric that ranks the rhos (default: the first
            compiled metric with "acc" in its name, else the first other
            than the loss, else the loss).
        higher_is_better: default False for a loss or error, else True.
        epochs: as in `keras_sam.study.compare.compare`.
        batch_size: as in `keras_sam.study.compare.compare`.
        variant: as in `keras_sam.study.compare.compare`.
        optimizer: as in `keras_sam.study.compare.compare`.
        loss: as in `keras_sam.study.compare.compare`.
        metrics: as in `keras_sam.study.compare.compare`.
        seed: as in `keras_sam.study.compare.compare`.
        sharpness_examples: as in `keras_sam.study.compare.compare`.
        verbose: as in `keras_sam.study.compare.compare`.

    Returns:
        A `RhoSearchResult`: ``result.best_rho``, ``result.table()``.

    Raises:
        ValueError: a bad argument (named), as `compare.compare`.
    """
    if isinstance(rhos, str) or not rhos:
        raise ValueError(f"`rhos` must be a non-empty sequence, got rhos={rhos!r}.")
    start = tuple(sorted({canonical_rho(_validation.positive_float(r, "rhos"))
                          for r in rhos}))  # fmt: skip
    options = SearchOptions(max_extensions, min_rho)
    epochs, batch_size = compare._checked_inputs(
        model, train, test, epochs, batch_size, loss
    )
    total_steps = epochs * compare._steps_per_epoch(train[0], batch_size)
    sam_variant = variant_for_training(variant, total_steps)
    fit = dict(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        total_steps=total_steps,
        sharpness_examples=sharpness_examples,
        verbose=verbose,
    )
    with compare.fresh_copies(model, seed, optimizer, loss, metrics) as fresh_copy:

        def arm(rho: float | None) -> compare.Arm:
            copy = fresh_copy()
            trained = copy
            if rho is not None:
                trained = keras_sam.sam(copy, rho=rho, variant=sam_variant)
            name = compare._arm_name(copy, rho is not None, rho, sam_variant)
            return compare._train_arm(trained, copy, train, test, name=name, **fit)

        base = arm(None)
        metric = _metric(base.test, metric)
        if higher_is_better is None:
            higher_is_better = not any(k in metric for k in _LOWER_IS_BETTER)
        sign = 1.0 if higher_is_better else -1.0
        arms: dict[float, compare.Arm] = {}
        grid = list(start)
        while True:
            for rho in grid:
                if rho not in arms:
                    arms[rho] = arm(rho)
            points = {
                r: _arm_point(r, a, base.test[metric], metric, sign)
                for r, a in arms.items()
            }
            decision = decide(points, start, options, higher_is_better)
            if decision.next_rho is None:
                break
            grid.append(decision.next_rho)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "start_rhos": list(start),
        "max_extensions": max_extensions,
        "variant": repr(sam_variant),
        "seed": seed,
        "steps": total_steps,
        "backend": keras.backend.backend(),
    }
    return RhoSearchResult(base, arms, metric, higher_is_better, decision, settings)


def plot(result: RhoSearchResult, path: str) -> str:
    """A PNG: the test metric against rho (the base optimizer dashed, the
    best rho circled), and the training loss per epoch of every arm."""
    from keras_sam.study.sweep.plots import subplots

    rhos = sorted(result.arms)
    fig, axes = subplots(1, 2, figsize=(10, 3.6))
    values = [result.arms[r].test[result.metric] for r in rhos]
    axes[0].plot(rhos, values, marker="o", label="SAM")
    axes[0].axhline(
        result.base.test[result.metric], ls="--", color="gray", label=result.base.name
    )
    if result.best_rho is not None:
        axes[0].scatter(
            [result.best_rho],
            [result.arms[result.best_rho].test[result.metric]],
            s=150,
            facecolors="none",
            edgecolors="red",
            label=f"best rho {result.best_rho:g} ({result.decision.verdict})",
        )
    axes[0].set(xscale="log", xlabel="rho", ylabel=f"test {result.metric}")
    axes[0].minorticks_off()
    axes[0].set_xticks(rhos, [f"{r:g}" for r in rhos])
    axes[0].legend(fontsize=7)
    for arm in (result.base, *(result.arms[r] for r in rhos)):
        axes[1].plot(range(1, len(arm.train_loss) + 1), arm.train_loss, label=arm.name)
    axes[1].set(xlabel="epoch", ylabel="training loss", yscale="log")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write(result: RhoSearchResult, out_dir: str, plots: bool = True) -> list[str]:
    """rho_search.json (and rho_search.png) in `out_dir`; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "rho_search.json")]
    with open(paths[0], "w") as f:
        json.dump(result.to_dict(), f, indent=2, default=str)
    if plots:
        paths.append(plot(result, os.path.join(out_dir, "rho_search.png")))
    return paths

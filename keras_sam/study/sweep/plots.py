"""PNG plots of a sweep (matplotlib, imported lazily; no pyplot).

``gap_vs_params.png``, ``best_rho_vs_params.png``, ``metric_vs_rho.png``
(a best rho at an edge of the rhos tried marked by a red open triangle)
and ``convergence.png`` (training loss per epoch, log scale; the
matrix-factorization figure of the paper); for a fixed-budget sweep
``metric_vs_sparsity.png`` and ``gap_vs_sparsity.png`` (paper Section 5.2).
"""

from __future__ import annotations

import math
import os
from typing import Any

from keras_sam.study.sweep.results import latest_ok
from keras_sam.study.sweep.summary import SizeSummary


def subplots(*args: Any, figsize: tuple[float, float], **kwargs: Any):
    """``(figure, axes)`` as ``pyplot.subplots`` gives them, without pyplot: a
    `matplotlib.figure.Figure` writes its PNG through its own canvas, so the
    process's backend (a notebook's inline one) is left as it was."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plots need matplotlib: `pip install matplotlib` (or pass --no-plots)."
        ) from error
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _err(values):
    return [0.0 if math.isnan(v) else v for v in values]


_EDGE_MARKERS = {"top": "^", "bottom": "v", "only": "s"}


def _mark_edges(ax, rows: list[SizeSummary], y, x=lambda s: s.params) -> None:
    """Red open markers on the points whose best rho is at an edge of the
    rhos tried (^ top, v bottom, s the only rho)."""
    for edge, marker in _EDGE_MARKERS.items():
        points = [(x(s), y(s)) for s in rows if s.edge == edge]
        if points:
            ax.scatter(
                [p for p, _ in points],
                [v for _, v in points],
                marker=marker,
                s=90,
                facecolors="none",
                edgecolors="red",
                zorder=5,
                label=f"best rho at the {edge} edge"
                if edge != "only"
                else "a single rho",
            )
    if any(s.edge for s in rows):
        ax.legend(fontsize=7)


def plot_summary(
    summaries: list[SizeSummary], metric: str, out_dir: str, title: str
) -> list[str]:
    """Writes the gap, best-rho and metric-vs-rho plots; returns their paths."""
    paths = []
    rows = [s for s in summaries if s.best_rho is not None and s.params > 0]

    fig, ax = subplots(figsize=(5, 3.5))
    if rows:
        ax.errorbar(
            [s.params for s in rows],
            [s.gap.mean for s in rows],
            yerr=_err([s.gap.se for s in rows]),
            marker="o",
            capsize=3,
        )
        _mark_edges(ax, rows, lambda s: s.gap.mean)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set(
        xscale="log", xlabel="parameters", ylabel=f"gap in {metric} (SAM better > 0)"
    )
    ax.set_title(title)
    paths.append(_save(fig, out_dir, "gap_vs_params.png"))

    fig, ax = subplots(figsize=(5, 3.5))
    if rows:
        ax.plot([s.params for s in rows], [s.best_rho for s in rows], marker="o")
        _mark_edges(ax, rows, lambda s: s.best_rho)
        if all(s.best_rho > 0 for s in rows):
            ax.set_yscale("log")
    ax.set(xscale="log", xlabel="parameters", ylabel="best rho")
    ax.set_title(title)
    paths.append(_save(fig, out_dir, "best_rho_vs_params.png"))

    fig, ax = subplots(figsize=(5.5, 3.8))
    for i, s in enumerate(summaries):
        color = f"C{i % 10}"
        rhos = [r for r in s.by_rho if r > 0]
        if rhos:
            ax.errorbar(
                rhos,
                [s.by_rho[r].mean for r in rhos],
                yerr=_err([s.by_rho[r].se for r in rhos]),
                marker="o",
                capsize=2,
                color=color,
                label=f"{s.params:,} params",
            )
        if s.best_rho is not None and s.best_rho > 0 and s.edge:
            ax.scatter(
                [s.best_rho],
                [s.by_rho[s.best_rho].mean],
                marker=_EDGE_MARKERS[s.edge],
                s=90,
                facecolors="none",
                edgecolors="red",
                zorder=5,
            )
        if not math.isnan(s.baseline.mean):
            ax.axhline(s.baseline.mean, color=color, ls="--", lw=1)
    ax.set(xscale="log", xlabel="rho", ylabel=metric)
    grid = sorted({r for s in summaries for r in s.by_rho if r > 0})
    if grid:
        ax.minorticks_off()
        ax.set_xticks(grid, [f"{r:g}" for r in grid])
    edges = " red: best at an edge;" if any(s.edge for s in summaries) else ""
    ax.set_title(f"{title} (dashed: baseline;{edges})", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir, "metric_vs_rho.png"))
    return paths


def plot_sparse(
    summaries: list[SizeSummary], metric: str, out_dir: str, title: str
) -> list[str]:
    """Fixed-budget sweep: baseline and best SAM vs sparsity, and the gap vs
    sparsity, one line per pruning method (the dense model at sparsity 0
    starts every line); returns the paths."""
    dense = [s for s in summaries if s.variant == "dense"]
    methods = sorted({s.pruning_method for s in summaries} - {None})
    lines = {
        m: dense + [s for s in summaries if s.pruning_method == m] for m in methods
    }
    fig, ax = subplots(figsize=(5.5, 3.8))
    for i, (method, rows) in enumerate(lines.items()):
        x = [s.sparsity for s in rows]
        for stat_name, style, label in [
            ("baseline", "--", "baseline"),
            ("best", "-", "best SAM"),
        ]:
            stats = [getattr(s, stat_name) for s in rows]
            ax.errorbar(
                x,
                [t.mean for t in stats],
                yerr=_err([t.se for t in stats]),
                marker="o",
                ls=style,
                capsize=2,
                color=f"C{i}",
                label=f"{method}: {label}",
            )
    ax.set(xlabel="sparsity (fixed non-zero budget)", ylabel=metric)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    paths = [_save(fig, out_dir, "metric_vs_sparsity.png")]

    fig, ax = subplots(figsize=(5, 3.5))
    for i, (method, rows) in enumerate(lines.items()):
        rows = [s for s in rows if s.best_rho is not None]
        ax.errorbar(
            [s.sparsity for s in rows],
            [s.gap.mean for s in rows],
            yerr=_err([s.gap.se for s in rows]),
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=method,
        )
    marked = [s for rows in lines.values() for s in rows if s.best_rho is not None]
    _mark_edges(ax, list({id(s): s for s in marked}.values()),
                lambda s: s.gap.mean, lambda s: s.sparsity)  # fmt: skip
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set(xlabel="sparsity (fixed non-zero budget)", ylabel=f"gap in {metric}")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir, "gap_vs_sparsity.png"))
    return paths


def plot_convergence(
    records: list[dict[str, Any]], out_dir: str, title: str, keys: set[str] | None
) -> str | None:
    """Seed-mean training loss per epoch, one panel per size, log scale."""
    ok = [
        r
        for r in latest_ok(records, keys)
        if r.get("history", {}).get("loss")
        and None not in r["history"]["loss"]  # NaN is stored as None
    ]
    if not ok:
        return None
    sizes = sorted({float(r["size"]) for r in ok})
    fig, axes = subplots(1, len(sizes), figsize=(4 * len(sizes), 3.3), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        curves: dict[str, list[list[float]]] = {}
        for r in ok:
            if float(r["size"]) == size:
                name = "baseline" if r["method"] == "baseline" else f"SAM {r['rho']:g}"
                curves.setdefault(name, []).append(r["history"]["loss"])
        for name in sorted(curves, key=lambda n: (n != "baseline", n)):
            runs = curves[name]
            length = min(len(c) for c in runs)
            mean = [sum(c[i] for c in runs) / len(runs) for i in range(length)]
            ax.plot(range(1, length + 1), mean, label=name)
        params = max(int(r.get("params") or 0) for r in ok if float(r["size"]) == size)
        ax.set(yscale="log", xlabel="epoch", ylabel="training loss")
        ax.set_title(f"size {size:g} ({params:,} params)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out_dir, "convergence.png")


def plot_smoothness(
    records: list[dict[str, Any]], out_dir: str, title: str, keys: set[str] | None
) -> str | None:
    """``beta_hat`` and ``alpha_hat`` per measured epoch, seed-mean, one line
    per size and method (solid: baseline, dashed: SAM), log scale."""
    ok = [r for r in latest_ok(records, keys) if r.get("smoothness")]
    if not ok:
        return None
    sizes = sorted({float(r["size"]) for r in ok})
    fig, axes = subplots(1, 2, figsize=(9, 3.5))
    curves: dict[tuple, dict[int, list[dict]]] = {}
    for r in ok:
        name = "baseline" if r["method"] == "baseline" else f"SAM {r['rho']:g}"
        per_epoch = curves.setdefault((float(r["size"]), name), {})
        for point in r["smoothness"]:
            per_epoch.setdefault(point["epoch"] + 1, []).append(point)
    for (size, name), per_epoch in sorted(curves.items()):
        epochs = sorted(per_epoch)
        for ax, key in zip(axes, ("beta_hat", "alpha_hat"), strict=True):
            values = [
                [p[key] for p in per_epoch[e] if p.get(key) is not None] for e in epochs
            ]
            points = [(e, sum(v) / len(v)) for e, v in zip(epochs, values) if v]
            ax.plot(
                [e for e, _ in points],
                [v for _, v in points],
                marker=".",
                ls="-" if name == "baseline" else "--",
                color=f"C{sizes.index(size) % 10}",
                label=f"size {size:g}, {name}",
            )
    for ax, label in zip(axes, ("beta_hat (smoothness)", "alpha_hat (PL)")):
        ax.set(yscale="log", xlabel="epoch", ylabel=label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out_dir, "smoothness.png")


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path

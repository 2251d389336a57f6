"""The sweep runner: plan, skip finished runs, train the rest, record each
run (failures included), then write ``summary.md`` and the plots.

```python
from keras_sam.study.sweep import run_sweep
from keras_sam.study.workloads import get_preset
run_sweep(get_preset("synthetic", "quick"), out_dir="results/synthetic-quick")
```
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import socket
import sys
import traceback
from typing import Any, TextIO

from keras_sam.study.sweep import cost_gain, plots, stats, summary, train, views
from keras_sam.study.sweep.distribute import resolve_strategy
from keras_sam.study.sweep.plan import (
    RunSpec,
    parse_shard,
    plan_runs,
    planned_variants,
    shard_runs,
)
from keras_sam.study.sweep.progress import Progress, format_seconds
from keras_sam.study.sweep.results import (
    append_result,
    finished_keys,
    read_folder,
    results_path,
)
from keras_sam.study.workloads.presets import Preset
from keras_sam.study.workloads.registry import Workload, get_workload

SUMMARY_NAME = "summary.md"


def describe_plan(preset: Preset, stream: TextIO | None = None) -> list[RunSpec]:
    """Prints the planned runs and each size's parameter count (no training,
    no data, no model built) and returns the plan."""
    stream = stream or sys.stdout
    workload = get_workload(preset.workload)
    runs = plan_runs(preset)
    print(
        f"{workload.name} ({workload.description}), preset {preset.name!r}: "
        f"{len(planned_variants(preset))} models x "
        f"(baseline + {1 + len(preset.sam_variants)} x {len(preset.rhos)} rho) x "
        f"{len(preset.seeds)} seeds = {len(runs)} runs, {preset.epochs} epochs, "
        f"batch {preset.batch_size}, lr {preset.lr:g} ({preset.schedule}), "
        f"momentum {preset.momentum:g}, {_weight_decay(preset)}"
        + (f", label noise {preset.label_noise:g}" if preset.label_noise else ""),
        file=stream,
    )
    print(f"rho grid: {', '.join(f'{r:g}' for r in preset.rhos)}", file=stream)
    if preset.sam_variants:
        print(f"SAM variants: {', '.join(preset.sam_variants)}", file=stream)
    if preset.loss != "default":
        print(f"loss: {preset.loss}", file=stream)
    if preset.hessian:
        print(
            f"Hessian metrics on {preset.hessian_examples} random training examples",
            file=stream,
        )
    budget = None
    if preset.sparse_budget is not None:
        budget = workload.count_params(preset.sparse_budget)
        print(
            f"fixed budget: {workload.size_name}={preset.sparse_budget:g} "
            f"({budget:,} parameters); wider sizes pruned at init by "
            f"{', '.join(preset.sparse_methods)}"
            + (", kept weights rescaled" if preset.sparse_rescale else ""),
            file=stream,
        )
    for size, variant in planned_variants(preset):
        n = sum(r.size == size and r.variant == variant for r in runs)
        params = workload.count_params(size)
        pruned = ""
        if variant != "dense":
            pruned = f" pruned ({variant}), sparsity ~{1 - budget / params:.2f}"
        print(
            f"  {workload.size_name}={size:g}: {params:,} parameters{pruned}, {n} runs",
            file=stream,
        )
    return runs


def _weight_decay(preset: Preset) -> str:
    return f"weight decay {preset.weight_decay:g} ({preset.weight_decay_form})"


def _base_record(spec: RunSpec, preset: Preset, workload: Workload) -> dict[str, Any]:
    return {
        "key": spec.key,
        "workload": spec.workload,
        "preset": preset.name,
        "config_id": spec.config_id,
        "variant": spec.variant,
        "size": spec.size,
        "method": spec.method,
        "rho": spec.rho,
        "seed": spec.seed,
        "metric": workload.metric,
        "finished_at": None,
        # Where it ran (sharded sweeps on a cluster / a multi-GPU machine).
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _write_config(out_dir: str, preset: Preset) -> None:
    path = os.path.join(out_dir, "configs.json")
    configs = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                configs = json.load(f)
        except json.JSONDecodeError:  # not expected: written atomically below
            configs = {}
    configs[preset.config_id()] = preset.training_config()
    # Shards may write at the same time: a whole file replaces a whole file.
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(configs, f, indent=1, sort_keys=True, default=str)
    os.replace(temporary, path)


def _fresh_data(workload, preset, previous, data_dir, download):
    data = workload.load(
        num_train=preset.num_train,
        num_test=preset.num_test,
        seed=preset.data_seed,
        batch_size=preset.batch_size,
        data_dir=data_dir,
        download=download,
        image_size=preset.image_size,
        **({"label_noise": preset.label_noise} if preset.label_noise else {}),
        **preset.data_options,
    )
    if data.sample is not None:  # the same examples every run: draw them once
        sample = previous.sample if previous is not None else None
        data = data._replace(sample=sample or functools.lru_cache(4)(data.sample))
    return data


def run_sweep(
    preset: Preset,
    out_dir: str,
    *,
    data_dir: str | None = None,
    download: bool | None = None,
    make_plots: bool = True,
    verbose: int | None = None,
    stream: TextIO | None = None,
    strategy: Any = None,
    shard: tuple[int, int] | str | None = None,
    runs: list[RunSpec] | None = None,
) -> list[summary.SizeSummary]:
    """Runs every unfinished run of ``preset``, appending to
    ``out_dir/results.jsonl``; returns the per-size summary.

    ``runs``: these runs (of this shard) instead of the preset's plan (the
    rho search's rounds, `keras_sam.study.sweep.rho_search`).

    ``shard=(k, n)`` (or ``"k/n"``) runs only shard k of n (`shard_runs`:
    every n-th run of the plan), appending to its own
    ``results.shard-k-of-n.jsonl``, so n processes on one machine or many
    can share ``out_dir``; a run finished in any results file of the folder
    is skipped. A shard writes no summary (other shards are still running):
    `write_summary` (``keras-sam sweep ... --summarize``) builds it from
    whatever is finished.

    The data is loaded before the first run: a data set that is neither
    prepared nor downloadable raises `DatasetUnavailableError` then, with
    nothing recorded. A run that raises is recorded with ``status:
    "failed"`` and its error, and the sweep goes on; it is retried on the
    next call. ``verbose`` is
    the Keras ``fit`` verbosity (default: the preset's).

    ``strategy``: None / ``"none"`` (default), ``"mirrored"`` (all visible
    GPUs, or the CPU; created once for the sweep) or a
    `tf.distribute.Strategy`; each run is built and compiled in its scope
    and records its ``replicas``. Not part of ``config_id``: the results are
    the same up to round-off, except with per-replica batch-norm statistics
    or SAM's per-replica eps (see `keras_sam.study.sweep.distribute`).
    """
    stream = stream or sys.stdout
    strategy = resolve_strategy(strategy)
    workload = get_workload(preset.workload)
    if isinstance(shard, str):
        shard = parse_shard(shard)
    elif shard is not None:
        shard = parse_shard(f"{shard[0]}/{shard[1]}")
    os.makedirs(out_dir, exist_ok=True)
    _write_config(out_dir, preset)
    path = results_path(out_dir, shard)
    runs = shard_runs(plan_runs(preset), shard) if runs is None else list(runs)
    done = finished_keys(read_folder(out_dir))
    todo = [r for r in runs if r.key not in done]
    which = "" if shard is None else f" (shard {shard[0]}/{shard[1]})"
    print(
        f"{workload.name}/{preset.name}{which}: {len(runs)} runs planned, "
        f"{len(runs) - len(todo)} already in {out_dir}, {len(todo)} to run",
        file=stream,
        flush=True,
    )
    progress = Progress(len(runs), len(runs) - len(todo), stream)
    # Loaded once before the first run: a data set that cannot be loaded or
    # downloaded stops the sweep here (DatasetUnavailableError), once.
    data = _fresh_data(workload, preset, None, data_dir, download) if todo else None
    first = True
    verbose = preset.keras_verbose if verbose is None else verbose
    for i, spec in enumerate(todo):
        record = _base_record(spec, preset, workload)
        if shard is not None:
            record["shard"] = f"{shard[0]}/{shard[1]}"
        params = workload.count_params(spec.size)
        left = [(r.size, workload.count_params(r.size)) for r in todo[i:]]
        progress.start(spec.label, spec.size, params, left)
        try:
            # tf.data pipelines carry their shuffle state from run to run:
            # a fresh one per run makes a run's data order independent of
            # the runs before it (resumed == uninterrupted). Arrays are reused.
            if data.batched and not first:
                data = _fresh_data(workload, preset, data, data_dir, download)
            first = False
            record.update(
                train.train_run(spec, workload, preset, data, verbose, strategy)
            )
            record["status"] = "ok"
            value = record["value"]
            message = f"{workload.metric} {value:.4f}"
        except KeyboardInterrupt:
            raise
        except Exception as error:  # recorded, and the sweep goes on
            record.update(
                status="failed",
                params=params,
                error=f"{type(error).__name__}: {error}",
                traceback=traceback.format_exc(limit=8),
            )
            message = f"FAILED: {record['error'][:300]}"
        record["finished_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        record["seconds"] = progress.end(spec.size, message)
        append_result(path, record)
    if shard is not None:
        print(
            f"shard {shard[0]}/{shard[1]} done; when every shard is: keras-sam "
            f"sweep {preset.workload} ... --out {out_dir} --summarize",
            file=stream,
            flush=True,
        )
        keys = {r.key for r in plan_runs(preset)}
        return summary.summarize(read_folder(out_dir), workload.higher_is_better, keys)
    return write_summary(preset, out_dir, make_plots=make_plots, stream=stream)


def _best_epoch_parts(records, workload: Workload, keys: set[str]) -> list[str]:
    """The best epoch's metric (as the authors' code reports it) and the
    final training fit, for sweeps with ``eval_every_epoch``."""
    score = f"best_epoch_{workload.metric}"
    best = summary.summarize(
        views.scored(records, score), workload.higher_is_better, keys
    )
    parts = [
        f"Best epoch's {workload.metric.replace('_', ' ')} (the test curve's "
        "best point):\n\n" + summary.markdown_table(best, score, workload.size_name),
        summary.rho_table(best, score),
    ]
    fit = views.train_fit_table(records, keys)
    if fit:
        parts.append("Training fit at the last epoch:\n\n" + fit)
    return parts


def write_summary(
    preset: Preset,
    out_dir: str,
    *,
    make_plots: bool = True,
    stream: TextIO | None = None,
    sections: list[str] | None = None,
) -> list[summary.SizeSummary]:
    """Writes ``summary.md`` (and the plots) for the runs of ``preset``
    finished in ``out_dir`` (``results.jsonl`` and the shards' files), with
    whatever is finished so far; prints the table. ``sections``: Markdown
    added after the tables (the rho search's verdicts)."""
    stream = stream or sys.stdout
    workload = get_workload(preset.workload)
    records = read_folder(out_dir)
    keys = {r.key for r in plan_runs(preset)}
    sizes = summary.summarize(records, workload.higher_is_better, keys)
    table = summary.markdown_table(sizes, workload.metric, workload.size_name)
    sparse = preset.sparse_budget is not None
    title = f"{workload.name} / {preset.name}"
    parts = [
        f"# Sweep: {title}\n",
        f"{workload.description}; {preset.epochs} epochs, batch {preset.batch_size}, "
        f"lr {preset.lr:g} ({preset.schedule}), momentum {preset.momentum:g}, "
        f"{_weight_decay(preset)}, SAM rule {preset.perturbation}, "
        + (f"label noise {preset.label_noise:g}, " if preset.label_noise else "")
        + f"seeds {list(preset.seeds)}; "
        f"config {preset.config_id()} (see configs.json). Metric: {workload.metric} "
        f"({'higher' if workload.higher_is_better else 'lower'} is better); "
        "mean ± standard error over seeds.\n",
    ]
    if sparse:
        parts.append(
            f"Fixed budget: the dense {workload.size_name}={preset.sparse_budget:g} "
            "model's kernel-weight count; wider models pruned at init "
            f"({', '.join(preset.sparse_methods)}) to it"
            + (
                ", kept weights rescaled by 1/sqrt(density)"
                if preset.sparse_rescale
                else ""
            )
            + ".\n"
        )
    parts += [
        table,
        summary.rho_table(sizes, workload.metric),
        *(sections or []),
    ]
    paired = stats.stats_section(
        records, workload.higher_is_better, keys, workload.size_name
    )
    if paired:
        parts.append(paired)
    if preset.eval_every_epoch:
        parts += _best_epoch_parts(records, workload, keys)
    if preset.loss != "default":
        parts.insert(2, f"Loss: {preset.loss} (training and Hessian metrics).\n")
    variants = cost_gain.cost_gain_table(
        records, workload.metric, workload.size_name, workload.higher_is_better, keys
    )
    if variants:
        parts.append("SAM variants, cost versus gain:\n\n" + variants)
    curvature = summary.hessian_table(records, keys)
    if curvature:
        parts.append("Curvature at the end of training:\n\n" + curvature)
    smoothness = summary.smoothness_table(records, keys)
    if smoothness:
        parts.append(
            "Smoothness and PL estimates along training (f* = 0; median over "
            "the measured steps):\n\n" + smoothness
        )
    seconds = sum(r.get("seconds") or 0.0 for r in records if r["key"] in keys)
    parts.append(f"Total run time recorded: {format_seconds(seconds)}.\n")
    if make_plots:
        try:
            plot = plots.plot_sparse if sparse else plots.plot_summary
            names = [
                os.path.basename(p)
                for p in plot(sizes, workload.metric, out_dir, title)
            ]
            for extra in (plots.plot_convergence, plots.plot_smoothness):
                path = extra(records, out_dir, title, keys)
                if path:
                    names.append(os.path.basename(path))
            parts.append("\n".join(f"![{n}]({n})" for n in names) + "\n")
        except ImportError as error:  # matplotlib missing: keep the table
            print(f"no plots: {error}", file=stream)
            parts.append(f"No plots: {error}\n")
    with open(os.path.join(out_dir, SUMMARY_NAME), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print("\n" + table, file=stream)
    print(f"summary: {os.path.join(out_dir, SUMMARY_NAME)}", file=stream, flush=True)
    return sizes

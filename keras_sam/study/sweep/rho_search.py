"""A rho search that cannot stop at an edge of its grid (``--rhos auto``).

Each ``(size, variant, method)`` of a sweep starts from the preset's rho grid.
When every seed of every grid rho (and of the baseline) is recorded, the
search looks at the best rho and, if it sits at an edge of the grid, adds the
next rho past that edge, geometrically by a factor of 2 (0.2 -> 0.4 -> 0.8,
0.05 -> 0.025), until the best is interior, or a limit stops it:

- the decision statistic is the seed-mean of the paired difference
  ``sign * (SAM_seed - baseline_seed)`` (``sign`` = +1 when higher is better),
  SAM better > 0; a rho with any seed failed, non-finite, or whose training
  loss ended above its first epoch's (an exploding loss), is *diverged* and
  ranks last, so the search never extends past a divergence;
- an edge rho within one standard error of the best (``tie``; of the
  per-seed difference of their gaps) counts as holding the best too, where
  SAM gains there: a noisy plateau is not taken for an interior optimum;
- every rho already recorded for all seeds joins the grid (free data);
- a best at the top edge is extended upward at most ``max_extensions`` times
  in all (then: ``"top edge at the limit"``);
- a best at the bottom edge is extended downward only while SAM beats the
  baseline there (mean gap > 0), down to ``min_rho`` (a grid of one rho
  that loses to the baseline is extended downward once, to see the trend).
  As rho -> 0 SAM becomes the baseline optimizer, so a best at the bottom
  edge with a gap <= 0 means that no rho tried helps: the verdict is
  ``"no gain"`` (the baseline is the best choice; rho -> 0), not a grid
  artifact. A best still at the bottom at ``min_rho`` with a positive gap
  is ``"bottom edge at the limit"``.

Extension runs are ordinary runs (`RunSpec`, their own keys: ``0.2 * 2`` is
keyed ``0.4``, so runs already recorded at that rho are reused), and the
search's state is a function of the results folder only: a killed search
resumes, and shards proceed in rounds (a shard with nothing left to run while
other shards' runs are missing stops and is simply run again).

```python
from keras_sam.study.sweep import rho_search
from keras_sam.study.workloads import get_preset
rho_search.run_rho_search(get_preset("mnist1d", "paper"), "results/m1d")
```

Command line: ``keras-sam sweep mnist1d --preset paper --rhos auto``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from keras_sam.study.sweep.plan import (
    BASELINE,
    SAM,
    RunSpec,
    parse_shard,
    plan_runs,
    planned_variants,
    shard_runs,
)
from keras_sam.study.sweep.results import finished_keys, latest_by_key, read_folder

FACTOR = 2.0
MAX_EXTENSIONS = 4

PENDING = "pending"
INTERIOR = "interior"
TOP_EDGE = "top edge"
BOTTOM_EDGE = "bottom edge"
TOP_LIMIT = "top edge at the limit"
BOTTOM_LIMIT = "bottom edge at the limit"
NO_GAIN = "no gain"
ALL_DIVERGED = "diverged at every rho"


def canonical_rho(rho: float) -> float:
    """``rho`` rounded to the 6 significant digits of a run's key
    (``f"{rho:g}"``), so that a computed rho finds the runs recorded at it."""
    return float(f"{float(rho):g}")


def next_rho(rho: float, direction: int) -> float:
    """The rho past ``rho``: times 2 (``direction`` +1) or divided by 2 (-1)."""
    return canonical_rho(rho * FACTOR if direction > 0 else rho / FACTOR)


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """Limits of the search (see the module docstring).

    ``max_extensions``: rhos added to one group's grid, at most.
    ``min_rho``: the lowest rho tried (default: the grid's lowest / 2 **
    ``max_extensions``). ``collapse``: a rho above the best whose mean metric
    falls by more than this fraction below the next lower rho's is reported
    as a collapse (it ranks by its value like any rho). ``tie``: an edge rho
    whose gap is within this many standard errors of the best's (of their
    per-seed difference, over the seeds they share; needs 2) ties with it,
    and the grid extends past it too: an optimum counts as interior only
    when it beats both edges by more than the noise.
    """

    max_extensions: int = MAX_EXTENSIONS
    min_rho: float | None = None
    collapse: float = 0.2
    tie: float = 1.0

    def __post_init__(self):
        if (
            isinstance(self.max_extensions, bool)
            or not isinstance(self.max_extensions, int)
            or self.max_extensions < 0
        ):
            raise ValueError(
                "`max_extensions` must be an integer >= 0, got "
                f"max_extensions={self.max_extensions!r}."
            )
        if self.min_rho is not None and not self.min_rho > 0:
            raise ValueError(f"`min_rho` must be > 0, got min_rho={self.min_rho!r}.")
        if not (isinstance(self.tie, int | float) and 0 <= self.tie < math.inf):
            raise ValueError(f"`tie` must be a number >= 0, got tie={self.tie!r}.")
        if not 0 < self.collapse < 1:
            raise ValueError(
                f"`collapse` must be in (0, 1), got collapse={self.collapse!r}."
            )

    def floor(self, start: Sequence[float]) -> float:
        if self.min_rho is not None:
            return canonical_rho(self.min_rho)
        return canonical_rho(min(start) / FACTOR**self.max_extensions)


@dataclasses.dataclass(frozen=True)
class RhoPoint:
    """One rho of one group: the seed-mean paired gap (SAM better > 0), the
    seed-mean metric, the seeds, why it counts as diverged (None if not),
    and the paired gap of each seed."""

    rho: float
    gap: float
    value: float
    seeds: int
    diverged: str | None = None
    by_seed: Mapping[int, float] = dataclasses.field(default_factory=dict)

    @property
    def rank(self) -> float:
        return -math.inf if self.diverged or math.isnan(self.gap) else self.gap


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the search does next: ``next_rho`` (None: stop) and its
    ``verdict`` (an interior optimum, a limit, no gain, or pending)."""

    best_rho: float | None
    next_rho: float | None
    verdict: str
    note: str = ""


def decide(
    points: Mapping[float, RhoPoint],
    start: Sequence[float],
    options: SearchOptions = SearchOptions(),
    higher_is_better: bool = True,
) -> Decision:
    """The next rho of a search whose finished rhos are ``points`` and whose
    grid started as ``start``: past the edge that holds the best, or None
    with the verdict why it stops.

    Equal gaps go to the smaller rho (the milder change to the base
    optimizer); an edge within ``options.tie`` standard errors of the best
    is extended past like a best at that edge.
    """
    if not points:
        return Decision(None, None, PENDING)
    grid = sorted(points)
    used = len(grid) - len({canonical_rho(r) for r in start})
    left = used < options.max_extensions
    floor = options.floor(start)
    best = max(grid, key=lambda r: (points[r].rank, -r))
    lowest, highest = grid[0], grid[-1]
    down = next_rho(lowest, -1)
    can_go_down = left and down >= floor * (1 - 1e-9)
    if all(p.rank == -math.inf for p in points.values()):
        if can_go_down:
            return Decision(None, down, ALL_DIVERGED)
        return Decision(None, None, ALL_DIVERGED, "no rho tried trains")
    gap = points[best].gap
    if best == highest and (best != lowest or gap > 0):
        if left:
            return Decision(best, next_rho(highest, +1), TOP_EDGE)
        return Decision(best, None, TOP_LIMIT, f"after {used} extensions")
    # A tie extends only where SAM gains over the baseline at the edge.
    tied_top, tied_bottom = (
        edge != best
        and points[edge].gap > 0
        and _ties(points[best], points[edge], options)
        for edge in (highest, lowest)
    )
    if tied_top or tied_bottom:
        edge = highest if tied_top else lowest
        note = f"rho {edge:g} within {options.tie:g} s.e. of the best {best:g}"
        if tied_top and left:
            return Decision(best, next_rho(highest, +1), TOP_EDGE, note)
        if tied_bottom and can_go_down:
            return Decision(best, down, BOTTOM_EDGE, note)
        # The optimum is not established inside the grid: say which limit.
        return Decision(best, None, TOP_LIMIT if tied_top else BOTTOM_LIMIT, note)
    if best == lowest:
        if gap <= 0 and highest == lowest and can_go_down:
            return Decision(best, down, BOTTOM_EDGE)  # one rho: which side?
        if gap <= 0:
            return Decision(
                best,
                None,
                NO_GAIN,
                "SAM no better than the baseline at any rho tried; as rho -> 0 "
                "SAM becomes the baseline",
            )
        if can_go_down:
            return Decision(best, down, BOTTOM_EDGE)
        return Decision(best, None, BOTTOM_LIMIT, f"min rho {floor:g}")
    return Decision(
        best, None, INTERIOR, _above_note(points, best, options, higher_is_better)
    )


def _ties(best: RhoPoint, edge: RhoPoint, options: SearchOptions) -> bool:
    """``edge`` is within ``options.tie`` standard errors of ``best``: of the
    per-seed difference of their gaps (2 seeds in common at least)."""
    if edge.diverged or not options.tie:
        return False
    seeds = sorted(set(best.by_seed) & set(edge.by_seed))
    if len(seeds) < 2:
        return False
    diffs = [best.by_seed[s] - edge.by_seed[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean <= options.tie * math.sqrt(var / len(diffs))


def _above_note(points, best, options, higher_is_better) -> str:
    """Divergence or collapse among the rhos above the best."""
    sign = 1.0 if higher_is_better else -1.0
    above = sorted(r for r in points if r > best)
    previous = points[best]
    for rho in above:
        point = points[rho]
        if point.diverged:
            return f"rho {rho:g} diverged ({point.diverged})"
        drop = sign * (previous.value - point.value)
        if previous.value and drop > options.collapse * abs(previous.value):
            return f"rho {rho:g} collapsed ({previous.value:.4g} -> {point.value:.4g})"
        previous = point
    return ""


# -- points from a sweep's records ------------------------------------------


def run_diverged(record: Mapping[str, Any] | None) -> str | None:
    """Why a run counts as diverged, or None: failed, a non-finite metric
    (stored as None) or training loss, or a final training loss above the
    first epoch's."""
    if record is None:
        return "missing"
    if record.get("status") != "ok":
        return "failed"
    value = record.get("value")
    if value is None or not math.isfinite(value):
        return "non-finite metric"
    loss = (record.get("history") or {}).get("loss") or []
    if any(v is None or not math.isfinite(v) for v in loss):
        return "non-finite loss"
    if len(loss) > 1 and loss[-1] > loss[0]:
        return "loss exploded"
    return None


def point_from_runs(
    rho: float,
    runs: Mapping[int, Mapping[str, Any]],
    baseline: Mapping[int, Mapping[str, Any]],
    higher_is_better: bool,
) -> RhoPoint:
    """The `RhoPoint` of one rho from its runs and the baseline's, by seed.
    The gap is the mean over the seeds where both runs have a finite value."""
    sign = 1.0 if higher_is_better else -1.0
    reasons = {s: run_diverged(r) for s, r in runs.items()}
    bad = [s for s, why in reasons.items() if why]
    diverged = None
    if bad:
        kinds = sorted({reasons[s] for s in bad})
        diverged = f"{len(bad)}/{len(runs)} seeds: {', '.join(kinds)}"
    values = {s: r["value"] for s, r in runs.items() if not reasons[s]}
    pairs = {
        s: sign * (values[s] - baseline[s]["value"])
        for s in sorted(values)
        if s in baseline and run_diverged(baseline[s]) is None
    }
    gap = sum(pairs.values()) / len(pairs) if pairs else math.nan
    value = sum(values.values()) / len(values) if values else math.nan
    return RhoPoint(rho, gap, value, len(runs), diverged, pairs)


@dataclasses.dataclass(frozen=True)
class GroupSearch:
    """The search of one ``(size, variant, method)``: its grid so far, the
    finished rhos' points and the decision on them."""

    size: float
    variant: str
    method: str
    start: tuple[float, ...]
    grid: tuple[float, ...]
    points: dict[float, RhoPoint]
    decision: Decision

    @property
    def extensions(self) -> tuple[float, ...]:
        """The rhos added to the start grid, in the order they were added
        (away from the start: upward ones ascending, downward descending),
        then any recorded rho between the start's."""
        top, bottom = max(self.start), min(self.start)
        up = sorted(r for r in self.grid if r > top)
        down = sorted((r for r in self.grid if r < bottom), reverse=True)
        inside = sorted(
            r for r in self.grid if bottom < r < top and r not in self.start
        )
        return (*up, *down, *inside)

    @property
    def done(self) -> bool:
        return self.decision.verdict != PENDING and self.decision.next_rho is None


def _key(preset, size, variant, method, rho, seed) -> str:
    return RunSpec(
        preset.workload, preset.config_id(), size, method, rho, seed, variant
    ).key


def search_state(
    preset,
    records: Iterable[Mapping[str, Any]],
    options: SearchOptions,
    higher_is_better: bool,
) -> list[GroupSearch]:
    """Every group's search, derived from ``records`` (the folder's results)
    alone: the grid starts as the preset's rhos and every rho already
    recorded for all seeds, and grows while all of its runs are recorded
    and the decision on them asks for the next rho."""
    latest = latest_by_key(list(records))
    start = tuple(sorted({canonical_rho(r) for r in preset.rhos}))
    if not start or start[0] <= 0:
        raise ValueError(
            "The rho search starts from the preset's rhos, which must be "
            f"non-empty and > 0, got rhos={preset.rhos!r}."
        )
    config_id = preset.config_id()
    found: dict[tuple[float, str, str], set[float]] = {}
    for r in latest.values():
        if r.get("config_id") == config_id and r.get("rho") is not None:
            group = (float(r["size"]), r.get("variant", "dense"), r["method"])
            found.setdefault(group, set()).add(canonical_rho(r["rho"]))
    out = []
    for size, variant in planned_variants(preset):
        baseline = {
            s: latest.get(_key(preset, size, variant, BASELINE, None, s))
            for s in preset.seeds
        }
        for method in (SAM, *preset.sam_variants):
            # Rhos already finished for every seed join the grid: free data.
            recorded = [
                rho
                for rho in sorted(found.get((float(size), variant, method), ()))
                if all(
                    _key(preset, size, variant, method, rho, s) in latest
                    for s in preset.seeds
                )
            ]
            grid = sorted({*start, *recorded})
            points: dict[float, RhoPoint] = {}
            decision = Decision(None, None, PENDING)
            while True:
                for rho in grid:
                    if rho in points:
                        continue
                    runs = {
                        s: latest.get(_key(preset, size, variant, method, rho, s))
                        for s in preset.seeds
                    }
                    if None in runs.values() or None in baseline.values():
                        break
                    points[rho] = point_from_runs(rho, runs, baseline, higher_is_better)
                if len(points) < len(grid):
                    decision = Decision(decision.best_rho, None, PENDING)
                    break
                decision = decide(points, start, options, higher_is_better)
                if decision.next_rho is None:
                    break
                grid = sorted({*grid, decision.next_rho})
            out.append(
                GroupSearch(size, variant, method, start, tuple(grid), points, decision)
            )
    return out


def search_runs(preset, state: Sequence[GroupSearch]) -> list[RunSpec]:
    """The plan of the preset's grid, then every group's extension runs (in
    the order the groups are planned, rhos in the order they were added)."""
    runs = plan_runs(preset)
    config_id = preset.config_id()
    for group in state:
        for rho in group.extensions:
            runs += [
                RunSpec(
                    preset.workload,
                    config_id,
                    group.size,
                    group.method,
                    rho,
                    s,
                    group.variant,
                )
                for s in preset.seeds
            ]
    return runs


def shard_search_runs(
    preset, runs: Sequence[RunSpec], shard: tuple[int, int] | None
) -> list[RunSpec]:
    """Shard ``(k, n)``'s runs: the preset grid's as `shard_runs` deals them,
    and an extension run to shard ``crc32(key) % n + 1``, so that its shard
    does not depend on which other extensions are known at the time."""
    if shard is None:
        return list(runs)
    k, n = shard
    base = plan_runs(preset)
    planned = {r.key for r in base}
    mine = shard_runs(base, shard)
    mine += [
        r
        for r in runs
        if r.key not in planned and zlib.crc32(r.key.encode()) % n == k - 1
    ]
    return mine


def grid_preset(preset, state: Sequence[GroupSearch]):
    """The preset with the union of every group's grid: its plan's keys
    cover every run of the search (for the summary's filter)."""
    rhos = sorted({r for g in state for r in g.grid} | set(preset.rhos))
    return preset.replace(rhos=tuple(rhos))


# -- the search as a sweep ---------------------------------------------------


def run_rho_search(
    preset,
    out_dir: str,
    *,
    options: SearchOptions = SearchOptions(),
    shard: tuple[int, int] | str | None = None,
    make_plots: bool = True,
    stream: TextIO | None = None,
    **sweep_options: Any,
) -> list[GroupSearch]:
    """Runs ``preset``'s sweep with the rho search: rounds of
    `keras_sam.study.sweep.run_sweep` on the runs the search asks for, until
    every group stops (or, for a shard, until it has nothing left to run);
    then writes ``summary.md`` with the search's verdicts (not for a shard:
    run ``--summarize`` when all are done). A run that fails is tried once
    per call (it counts as diverged until a later call retries it).
    ``sweep_options`` go to `run_sweep` (``data_dir``, ``verbose``, ...).
    Returns the groups' searches.
    """
    from keras_sam.study.sweep.runner import run_sweep
    from keras_sam.study.workloads.registry import get_workload

    stream = stream or sys.stdout
    if isinstance(shard, str):
        shard = parse_shard(shard)
    higher = get_workload(preset.workload).higher_is_better
    tried: set[str] = set()
    while True:
        records = read_folder(out_dir)
        state = search_state(preset, records, options, higher)
        runs = shard_search_runs(preset, search_runs(preset, state), shard)
        done = finished_keys(records)
        todo = [r for r in runs if r.key not in done and r.key not in tried]
        if not todo:
            break
        tried |= {r.key for r in todo}
        print(
            f"rho search: {sum(g.done for g in state)}/{len(state)} groups done; "
            f"running {len(todo)} runs",
            file=stream,
            flush=True,
        )
        run_sweep(
            grid_preset(preset, state),
            out_dir,
            runs=todo,
            shard=shard,
            make_plots=False,
            stream=stream,
            **sweep_options,
        )
    pending = [g for g in state if not g.done]
    if shard is not None or pending:
        if pending:
            print(
                f"rho search: {len(pending)} groups wait on runs of other shards; "
                "run again when they finish",
                file=stream,
                flush=True,
            )
        return state
    write_search_summary(preset, out_dir, options, make_plots=make_plots, stream=stream)
    return state


def search_table(state: Sequence[GroupSearch], size_name: str = "size") -> str:
    """One row per group: the grid tried, the best rho and the verdict."""
    lines = [
        f"| {size_name} | method | rhos tried | best rho | verdict |",
        "|---:|---|---|---:|---|",
    ]
    for g in state:
        label = f"{g.size:g}" + ("" if g.variant == "dense" else f" {g.variant}")
        tried = ", ".join(
            f"{r:g}" + ("+" if r in g.extensions else "")
            + ("!" if r in g.points and g.points[r].diverged else "")
            for r in g.grid
        )  # fmt: skip
        best = "n/a" if g.decision.best_rho is None else f"{g.decision.best_rho:g}"
        verdict = g.decision.verdict
        if g.decision.next_rho is not None and verdict != PENDING:
            verdict = f"extending to {g.decision.next_rho:g}"
        if g.decision.note:
            verdict += f" ({g.decision.note})"
        lines.append(f"| {label} | {g.method} | {tried} | {best} | {verdict} |")
    return "\n".join(lines) + "\n"


def search_section(
    state: Sequence[GroupSearch], options: SearchOptions, size_name: str = "size"
) -> str:
    start = ", ".join(f"{r:g}" for r in state[0].start) if state else ""
    return (
        f"Rho search (`--rhos auto`): from the grid {start} (and any rho "
        "already recorded for every seed), a best at an edge, or within "
        f"{options.tie:g} standard error of an edge (of their per-seed "
        f"difference), is extended past it by a factor of {FACTOR:g} (at most "
        f"{options.max_extensions} extensions; + marks them, ! a diverged rho); "
        "decided on the seed-mean paired gap over the baseline. 'no gain': the "
        "best is the lowest rho and it does not beat the baseline (SAM -> the "
        "baseline as rho -> 0); 'pending': runs missing.\n\n"
        + search_table(state, size_name)
    )


def write_search_summary(
    preset,
    out_dir: str,
    options: SearchOptions = SearchOptions(),
    *,
    make_plots: bool = True,
    stream: TextIO | None = None,
) -> list[GroupSearch]:
    """``summary.md`` of a rho search's folder: the sweep's summary over
    every grid rho and extension, with the search's table."""
    from keras_sam.study.sweep.runner import write_summary
    from keras_sam.study.workloads.registry import get_workload

    workload = get_workload(preset.workload)
    state = search_state(
        preset, read_folder(out_dir), options, workload.higher_is_better
    )
    write_summary(
        grid_preset(preset, state),
        out_dir,
        make_plots=make_plots,
        stream=stream,
        sections=[search_section(state, options, workload.size_name)],
    )
    return state


def run_command(args: Any, preset, out: str, shard: tuple[int, int] | None) -> int:
    """``keras-sam sweep ... --rhos auto``: the search's dry run (the first
    round's plan), ``--summarize``, or the search itself."""
    if args.rhos != "auto":
        print(
            "keras-sam sweep: error: `--max-extensions` needs `--rhos auto`, got "
            f"--rhos={','.join(f'{r:g}' for r in preset.rhos)}.",
            file=sys.stderr,
        )
        return 2
    try:
        options = SearchOptions(
            MAX_EXTENSIONS if args.max_extensions is None else args.max_extensions
        )
        search_state(preset, [], options, True)  # checks the start grid
        if args.launcher != "none":
            raise ValueError(
                "`--rhos auto` runs in rounds that depend on the results: run "
                "each shard with --shard K/N (again until it reports no runs "
                f"left), not --launcher {args.launcher}."
            )
    except ValueError as error:
        print(f"keras-sam sweep: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        from keras_sam.study.sweep.runner import describe_plan

        runs = shard_runs(describe_plan(preset), shard)
        print(
            f"rho search: extends each (size, method) x{FACTOR:g} past the edge "
            f"that holds its best rho, at most {options.max_extensions} times, "
            f"down to rho {options.floor(preset.rhos):g}"
            + ("" if shard is None else f"; shard {shard[0]}/{shard[1]}: {len(runs)}")
        )
        return 0
    if args.summarize:
        write_search_summary(preset, out, options, make_plots=not args.no_plots)
        return 0
    from keras_sam.study.workloads import DatasetUnavailableError

    try:
        state = run_rho_search(
            preset,
            out,
            options=options,
            shard=shard,
            make_plots=not args.no_plots,
            data_dir=args.data_dir,
            download=False if args.no_download else None,
            verbose=args.verbose,
            strategy=args.strategy,
        )
    except DatasetUnavailableError as error:
        print(f"keras-sam sweep: error: {error}", file=sys.stderr)
        return 2
    latest = latest_by_key(read_folder(out)).values()
    failed = any(r.get("status") == "failed" for r in latest)  # retried next call
    return 1 if failed or not all(g.done for g in state) else 0

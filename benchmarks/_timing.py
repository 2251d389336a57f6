"""The timing loop of the step-time benchmarks (`sam_step_time.py`,
`backends.py`, `variants.py`).

Each contender is a callable that trains a fixed number of steps (a `fit`
call on an in-memory dataset, after a warm-up). The contenders run in turn,
round after round, so that load on a shared machine hits all of them alike;
the median per-step time over the rounds is the figure. Wall and process CPU
time (all threads of the process: the steadier figure on a shared or
CPU-quota-throttled machine) are both taken.

    samples = interleave({"sgd": lambda: sgd.fit(...), ...}, steps, rounds)
    wall, cpu = medians(samples)["sgd"]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

#: (wall seconds, process CPU seconds) per step.
Sample = tuple[float, float]


def seconds_per_step(run: Callable[[], object], steps: int) -> Sample:
    """(wall, CPU) seconds per step of one call of `run`, which trains
    `steps` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def interleave(
    runs: dict[str, Callable[[], object]], steps: int, rounds: int
) -> dict[str, list[Sample]]:
    """Each of `runs` once per round, in turn, for `rounds` rounds: the
    per-step samples of each."""
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(seconds_per_step(run, steps))
    return samples


def medians(samples: dict[str, list[Sample]]) -> dict[str, Sample]:
    """Median wall and median CPU time per step of each contender."""
    return {
        name: (
            statistics.median(wall for wall, _ in values),
            statistics.median(cpu for _, cpu in values),
        )
        for name, values in samples.items()
    }


def fit_steps(model, data, steps: int) -> Callable[[], object]:
    """A run of `steps` steps of ``model.fit`` on a repeated dataset."""
    return lambda: model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)

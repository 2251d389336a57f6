"""Sweep progress: runs done / left and a time estimate."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``"1h02m"``, ``"4m05s"`` or ``"12s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Prints one line per run start and end.

    The estimate is the mean time of this session's runs of the same size
    (all sizes while none of that size has finished) times the runs left.
    """

    def __init__(self, total: int, already_done: int, stream: TextIO | None = None):
        self.total = total
        self.done = already_done
        self.stream = stream or sys.stdout
        self._seconds: dict[float, list[float]] = {}
        self._start = 0.0

    def _eta(self, sizes_left: list[float]) -> str:
        if not self._seconds:
            return "estimating"
        every = [s for times in self._seconds.values() for s in times]
        overall = sum(every) / len(every)
        total = 0.0
        for size in sizes_left:
            times = self._seconds.get(size)
            total += sum(times) / len(times) if times else overall
        return "~" + format_seconds(total)

    def start(self, label: str, params: int, sizes_left: list[float]) -> None:
        self._start = time.perf_counter()
        left = self.total - self.done
        print(
            f"[{self.done}/{self.total} done, {left} left, "
            f"{self._eta(sizes_left)} left] {label} ({params:,} params)",
            file=self.stream,
            flush=True,
        )

    def end(self, size: float, message: str) -> float:
        seconds = time.perf_counter() - self._start
        self._seconds.setdefault(size, []).append(seconds)
        self.done += 1
        print(
            f"    -> {message} ({format_seconds(seconds)})",
            file=self.stream,
            flush=True,
        )
        return seconds

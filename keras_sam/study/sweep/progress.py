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

    The estimate sums, over the runs left, the mean time of this session's
    runs of the same size, or for a size not yet timed the nearest timed
    size's mean scaled by the square root of the parameter ratio.
    """

    def __init__(self, total: int, already_done: int, stream: TextIO | None = None):
        self.total = total
        self.done = already_done
        self.stream = stream or sys.stdout
        self._seconds: dict[float, list[float]] = {}
        self._params: dict[float, int] = {}
        self._start = 0.0

    def _eta(self, left: list[tuple[float, int]]) -> str:
        if not self._seconds:
            return "estimating"
        measured = {
            size: (sum(t) / len(t), self._params[size])
            for size, t in self._seconds.items()
        }
        total = 0.0
        for size, params in left:
            if size in measured:
                total += measured[size][0]
                continue
            # Nearest measured size, scaled by sqrt(params ratio): step time
            # grows sub-linearly with size at these scales (fixed overhead).
            near = min(measured.values(), key=lambda m: abs(m[1] - params))
            total += near[0] * (params / max(near[1], 1)) ** 0.5
        return "~" + format_seconds(total)

    def start(self, label: str, size: float, params: int, left) -> None:
        """Announces a run; ``left`` lists (size, params) of the runs left,
        this one included."""
        self._start = time.perf_counter()
        self._params[size] = params
        remaining = self.total - self.done
        print(
            f"[{self.done}/{self.total} done, {remaining} left, "
            f"{self._eta(list(left))} left] {label} ({params:,} params)",
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

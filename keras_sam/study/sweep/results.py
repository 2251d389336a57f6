"""Append-only JSON-lines results: one record per finished or failed run.

A sweep killed mid-write leaves at most a truncated last line, which
`read_results` skips; the latest record of a key wins. A sharded sweep
(``--shard K/N``) writes ``results.shard-K-of-N.jsonl``, one file per shard
and so one writer per file; `read_folder` merges every results file of a
folder, ordered by ``finished_at``.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any

RESULTS_NAME = "results.jsonl"
SHARD_RESULTS = "results.shard-{k}-of-{n}.jsonl"


def results_path(out_dir: str, shard: tuple[int, int] | None = None) -> str:
    """The file a sweep (or shard ``(k, n)``) appends to."""
    if shard is None:
        return os.path.join(out_dir, RESULTS_NAME)
    return os.path.join(out_dir, SHARD_RESULTS.format(k=shard[0], n=shard[1]))


def read_folder(out_dir: str) -> list[dict[str, Any]]:
    """The records of every results file in ``out_dir`` (``results.jsonl``
    and the shards' files), oldest first by ``finished_at`` (file order
    among equal times), so that the latest record of a key wins."""
    paths = [os.path.join(out_dir, RESULTS_NAME)]
    shards = os.path.join(out_dir, SHARD_RESULTS.format(k="*", n="*"))
    paths += sorted(glob.glob(shards))
    records = [r for path in paths for r in read_results(path)]
    return sorted(records, key=lambda r: r.get("finished_at") or "")


def _clean(value: Any) -> Any:
    # JSON has no NaN / inf: store them as None.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _ends_without_newline(path: str) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def append_result(path: str, record: dict[str, Any]) -> None:
    """Appends one record as a line and flushes it to disk."""
    line = json.dumps(_clean(record), sort_keys=True) + "\n"
    if _ends_without_newline(path):
        line = "\n" + line  # a kill cut the last line: start a fresh one
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_results(path: str) -> list[dict[str, Any]]:
    """All well-formed records in file order (missing file: empty list)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a kill
            if isinstance(record, dict) and "key" in record:
                records.append(record)
    return records


def latest_by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each key."""
    return {r["key"]: r for r in records}


def latest_ok(
    records: list[dict[str, Any]], keys: set[str] | None = None
) -> list[dict[str, Any]]:
    """The latest record of each key (of ``keys`` if given) if it succeeded."""
    return [
        r
        for k, r in latest_by_key(records).items()
        if r.get("status") == "ok" and (keys is None or k in keys)
    ]


def finished_keys(records: list[dict[str, Any]]) -> set[str]:
    """Keys whose latest record succeeded (failed runs are retried)."""
    return {r["key"] for r in latest_ok(records)}

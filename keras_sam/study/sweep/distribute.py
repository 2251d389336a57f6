"""The sweep's distribution strategy: ``"none"`` or ``"mirrored"`` (all
visible GPUs of the machine, or the CPU).

```python
strategy = resolve_strategy("mirrored")      # one per sweep
strategy.num_replicas_in_sync                # runs' "replicas"
```

The strategy is not part of a run's ``config_id``: a run gives the same
result with or without it, up to floating-point round-off, except where
replicas compute something on their own part of the batch (per-replica
batch-norm statistics, SAM with ``replica_eps="per_replica"``).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

STRATEGIES = ("none", "mirrored")


def resolve_strategy(strategy: Any) -> tf.distribute.Strategy | None:
    """None for ``None`` / ``"none"``, a new `tf.distribute.MirroredStrategy`
    for ``"mirrored"``, a `tf.distribute.Strategy` as it is."""
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy is None or strategy == "none":
        return None
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ValueError(
        f"`strategy` must be one of {list(STRATEGIES)} (or a "
        f"tf.distribute.Strategy), got strategy={strategy!r}."
    )


def replicas(strategy: tf.distribute.Strategy | None) -> int:
    """Replicas of ``strategy`` (1 without one)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)

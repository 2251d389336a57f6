"""Other views of a sweep's records than the final test metric: the best
epoch's metric (``--eval-every-epoch``) and the final training fit.

```python
best = summarize(scored(records, "best_epoch_test_accuracy"), higher_is_better=True)
print(train_fit_table(records))   # training accuracy / loss of the last epoch
```
"""

from __future__ import annotations

from typing import Any

from keras_sam.study.sweep.summary import _per_run_table


def scored(records: list[dict[str, Any]], score: str) -> list[dict[str, Any]]:
    """The records with ``value`` replaced by ``scores[score]``; ``ok``
    records without that score are left out (others are kept as they are,
    so failures still count)."""
    out = []
    for r in records:
        if r.get("status") != "ok":
            out.append(r)
        elif score in (r.get("scores") or {}):
            out.append(dict(r, value=r["scores"][score]))
    return out


def _last(history: dict, name: str) -> float | None:
    values = history.get(name)
    return float(values[-1]) if values else None


def train_fit_table(
    records: list[dict[str, Any]], keys: set[str] | None = None, digits: int = 4
) -> str | None:
    """Seed-mean ± s.e. of the last epoch's training accuracy and loss (the
    running means Keras reports over that epoch, on the possibly noisy
    training labels), per size and method; None if no record has them."""
    columns = {"accuracy": "final train accuracy", "loss": "final train loss"}
    return _per_run_table(records, keys, "history", _last, columns, digits)

"""The best-epoch and training-fit views of a sweep's records."""

from keras_sam.study.sweep import summary, views


def _record(size, method, rho, seed, final, best, train):
    return {
        "key": f"w|c|dense|{size}|{method}|{rho}|{seed}",
        "status": "ok",
        "size": size,
        "method": method,
        "rho": rho,
        "seed": seed,
        "params": 10 * size,
        "value": final,
        "scores": {"test_accuracy": final, "best_epoch_test_accuracy": best},
        "history": {"accuracy": [0.1, train], "loss": [2.0, 1.0 - train]},
    }


RECORDS = [
    _record(4, "baseline", None, 0, 0.50, 0.60, 0.8),
    _record(4, "baseline", None, 1, 0.52, 0.62, 0.9),
    _record(4, "sam", 0.1, 0, 0.55, 0.58, 0.7),
    _record(4, "sam", 0.1, 1, 0.57, 0.60, 0.8),
    {
        "key": "w|c|dense|4|sam|0.2|0",
        "status": "failed",
        "size": 4,
        "method": "sam",
        "rho": 0.2,
        "seed": 0,
    },
]


def test_scored_summarizes_the_best_epoch():
    final = summary.summarize(RECORDS, higher_is_better=True)[0]
    best = summary.summarize(views.scored(RECORDS, "best_epoch_test_accuracy"), True)[0]
    assert round(final.gap.mean, 6) == 0.05  # SAM better at the last epoch
    assert round(best.gap.mean, 6) == -0.02  # and worse at the best epoch
    assert best.failed == final.failed == 1
    old = dict(RECORDS[0], scores={"test_accuracy": 0.5})  # no test curve
    assert views.scored([old], "best_epoch_test_accuracy") == []


def test_train_fit_table_takes_the_last_epoch():
    table = views.train_fit_table(RECORDS)
    assert "| 4 | baseline | 0.8500 ± 0.0500 | 0.1500 ± 0.0500 |" in table
    assert "| 4 | SAM rho=0.1 | 0.7500 ± 0.0500 |" in table
    assert views.train_fit_table([RECORDS[-1]]) is None

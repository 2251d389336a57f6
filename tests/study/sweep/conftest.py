"""Fixtures of the sweep tests: `train.train_run` counted (and failed on
demand) or replaced by the rho search's fake runner; the uninterrupted tiny
sweep that the sharded, killed and requeued sweeps are compared with."""

import math

import pytest

from keras_sam.study import cli
from keras_sam.study.sweep import train
from tests.study.sweep.runs import TINY_ARGS, fake_value


@pytest.fixture(scope="session")
def whole_sweep(tmp_path_factory):
    """The folder of `keras-sam sweep synthetic TINY_ARGS --no-plots`, run once
    in this process with the real `train_run` (a session fixture is set up
    before a test's own fixtures and patches)."""
    out = tmp_path_factory.mktemp("whole") / "sweep"
    args = ["sweep", "synthetic", *TINY_ARGS, "--out", str(out), "--no-plots"]
    assert cli.main(args) == 0
    return out


@pytest.fixture
def counted(monkeypatch):
    """Counts train_run calls; fails the runs whose key is in `fail`."""
    calls, fail = [], set()
    real = train.train_run

    def wrapped(spec, *args, **kwargs):
        calls.append(spec.key)
        if spec.key in fail:
            raise RuntimeError("boom: injected failure")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_run", wrapped)
    return calls, fail


@pytest.fixture
def fake(monkeypatch):
    """train.train_run replaced: records the keys it trains, raises
    KeyboardInterrupt on the call numbered ``kill[0]`` (1-based)."""
    calls, kill = [], []

    def train_run(spec, workload, preset, data, verbose=0, strategy=None):
        calls.append(spec.key)
        if kill and len(calls) == kill[0]:
            kill.clear()
            raise KeyboardInterrupt
        value = fake_value(spec)
        return {
            "params": workload.count_params(spec.size),
            "value": value,
            "history": {"loss": [2.0, 1.0 if math.isfinite(value) else value]},
            "train_seconds": 0.01,
        }

    monkeypatch.setattr(train, "train_run", train_run)
    return calls, kill

"""`keras_sam.study.search_rho` and ``keras-sam compare --rho auto``: the
search on a model whose metric has a known best rho, then real training on a
Conv+BN classifier and a two-input BCE model with (n,) labels."""

import json
import math
import re

import keras
import numpy as np
import pytest

from keras_sam.study import cli, compare, search_rho
from keras_sam.study.sweep import model_search
from keras_sam.study.sweep.rho_search import INTERIOR, NO_GAIN
from tests.study.builders import compare_data, compare_model


@pytest.fixture
def known_optimum(monkeypatch):
    """compare._train_arm replaced: test accuracy peaks at rho 0.4 (0.9),
    falling by 0.02 per factor of 2 squared; the base optimizer gets 0.7."""
    names = []

    def train_arm(trained, plain, train, test, *, name, **kwargs):
        names.append(name)
        found = re.search(r"rho=([0-9.e-]+)", name)
        accuracy = 0.7
        if found:
            accuracy = 0.9 - 0.02 * math.log2(float(found.group(1)) / 0.4) ** 2
        return compare.Arm(
            name, {"loss": 1 - accuracy, "accuracy": accuracy}, 1.0, 0.1, 0.01,
            2.0 if found else 1.0, [1.0, 0.5],
        )  # fmt: skip

    monkeypatch.setattr(compare, "_train_arm", train_arm)
    return names


def test_search_extends_to_the_known_optimum(known_optimum):
    train, test = compare_data()
    result = search_rho(compare_model(), train, test, epochs=1, batch_size=16)
    assert result.metric == "accuracy" and result.higher_is_better
    assert sorted(result.arms) == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8]
    assert result.best_rho == 0.4 and result.decision.verdict == INTERIOR
    # The base optimizer once, each rho once, in the order the search asked.
    assert known_optimum[0] == "SGD" and len(known_optimum) == 7
    table = result.table()
    assert "SAM (rho=0.4)" in table and "<- best" in table
    assert "best rho 0.4: interior" in table
    json.dumps(result.to_dict())


def test_the_loss_ranks_lower_first_and_limits_hold(known_optimum):
    train, test = compare_data()
    result = search_rho(compare_model(), train, test, epochs=1, metric="loss",
                        max_extensions=1)  # fmt: skip
    assert not result.higher_is_better and sorted(result.arms)[-1] == 0.2
    assert result.best_rho == 0.2 and result.decision.verdict.endswith("limit")


def test_bad_arguments_are_named():
    train, test = compare_data()
    for bad, name in (((), "rhos"), ((0.1, -1.0), "rhos"), ("0.1", "rhos")):
        with pytest.raises(ValueError, match=name):
            search_rho(compare_model(), train, test, rhos=bad)
    with pytest.raises(ValueError, match="max_extensions"):
        search_rho(compare_model(), train, test, max_extensions=-1)
    with pytest.raises(ValueError, match="epochs"):
        search_rho(compare_model(), train, test, epochs=0)


def _two_inputs():
    keras.utils.set_random_seed(2)
    a, b = keras.Input((5,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    h = keras.layers.LayerNormalization()(h)
    model = keras.Model([a, b], keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(
        keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"]
    )
    return model


def test_real_searches_on_a_zoo(tmp_path):
    # Conv + BatchNorm + Dropout, sparse labels: two rhos, one extension.
    train, test = compare_data()
    result = search_rho(compare_model(), train, test, rhos=(0.05, 0.1), epochs=1,
                        batch_size=16, max_extensions=1,
                        sharpness_examples=16)  # fmt: skip
    assert 2 <= len(result.arms) <= 3 and result.best_rho in result.arms
    assert all(a.passes_per_step == 2 for a in result.arms.values())
    assert result.base.passes_per_step == 1
    assert result.decision.verdict != "pending"
    paths = model_search.write(result, str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["rho_search.json", "rho_search.png"]
    # Two inputs, BCE with (n,) labels, LayerNorm; the loss ranks the rhos.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(48, 5)), rng.normal(size=(48, 3))
    y = (a[:, 0] + b[:, 0] > 0).astype("float32")
    a, b = a.astype("float32"), b.astype("float32")
    result = search_rho(
        _two_inputs(), ([a[:32], b[:32]], y[:32]), ([a[32:], b[32:]], y[32:]),
        rhos=(0.1,), epochs=2, batch_size=16, metric="loss", max_extensions=1,
        sharpness_examples=0,
    )  # fmt: skip
    assert result.metric == "loss" and not result.higher_is_better
    assert len(result.arms) == 2  # one rho, then one step up or down
    verdicts = {INTERIOR, NO_GAIN, "top edge at the limit", "bottom edge at the limit"}
    assert result.decision.verdict in verdicts


def test_compare_command_with_rho_auto(tmp_path, capsys, known_optimum):
    (x, y), (x_test, y_test) = compare_data()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    compare_model().save(tmp_path / "m.keras")
    code = cli.main(["compare", str(tmp_path / "m.keras"), "--data",
                     str(tmp_path / "d.npz"), "--rho", "auto", "--epochs", "1",
                     "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "best rho 0.4: interior" in printed and "SAM (rho=0.8)" in printed
    saved = json.loads((tmp_path / "out" / "rho_search.json").read_text())
    assert saved["best_rho"] == 0.4 and len(saved["arms"]) == 6
    assert (tmp_path / "out" / "rho_search.png").exists()
    with pytest.raises(SystemExit):
        cli.main(["compare", "m.keras", "--data", "d.npz", "--rho", "big"])
    assert "a number or 'auto'" in capsys.readouterr().err

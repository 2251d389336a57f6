"""`keras_sam.study.compare` and ``keras-sam compare``: both arms start from
the model's weights and see the same batches; the table, JSON and plot."""

import json

import keras
import numpy as np
import pytest

from keras_sam.study import cli, compare


def _data(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = (x.reshape(n, -1)[:, :3].sum(1) > 0).astype("int64")
    return (x[:64], y[:64]), (x[64:], y[64:])


def _model(compiled=True):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.2)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    if compiled:
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model


def test_rho_zero_arms_are_identical_and_the_model_is_left_alone():
    """With rho = 0 SAM's step is the optimizer's: the two arms must agree
    exactly, which they only do from the same weights, batches and dropout."""
    train, test = _data()
    model = _model()
    before = [v.numpy() for v in model.weights]
    result = compare.compare(model, train, test, epochs=2, batch_size=16, rho=0.0)
    assert result.base.test.keys() == {"loss", "accuracy"}
    np.testing.assert_allclose(result.sam.test["loss"], result.base.test["loss"], 1e-5)
    np.testing.assert_allclose(result.sam.train_loss, result.base.train_loss, 1e-5)
    assert result.base.passes_per_step == 1 and result.sam.passes_per_step == 2
    assert np.isfinite(result.base.sharpness) and result.base.sharpness > 0
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_sam_differs_and_a_phase_variant_gets_the_step_count():
    train, test = _data()
    result = compare.compare(
        _model(),
        train,
        test,
        epochs=2,
        batch_size=16,
        rho=0.5,
        variant="latesam",
        sharpness_examples=0,
    )
    assert result.settings["steps"] == 8
    assert "LatePhaseSAM(total_steps=8, start=0.5)" == result.settings["variant"]
    assert result.sam.passes_per_step == 1.5  # SAM on the last 4 of 8 steps
    assert result.sam.train_loss != result.base.train_loss
    assert "sharpness" in result.table()


def test_uncompiled_model_needs_a_loss():
    train, test = _data()
    with pytest.raises(ValueError, match="`loss`"):
        compare.compare(_model(compiled=False), train, test, epochs=1)
    result = compare.compare(
        _model(compiled=False),
        train,
        test,
        epochs=1,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adam",
        sharpness_examples=0,
    )
    assert result.base.name == "Adam"


def test_command_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    (x, y), (x_test, y_test) = _data()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    _model().save(tmp_path / "m.keras")
    code = cli.main(
        [
            "compare",
            str(tmp_path / "m.keras"),
            "--data",
            str(tmp_path / "d.npz"),
            "--epochs",
            "2",
            "--sharpness-examples",
            "32",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "SAM (rho=0.05)" in printed
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["settings"]["epochs"] == 2
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000


def test_command_names_missing_arrays(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 1)))
    _model().save(tmp_path / "m.keras")
    code = cli.main(
        ["compare", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz")]
    )
    assert code == 2
    assert "missing ['x_test', 'y_test', 'y_train']" in capsys.readouterr().err

"""`keras_sam.study.compare` and ``keras-sam compare``: both arms start from
the model's weights and see the same batches; the table, JSON and plot."""

import json

import keras
import numpy as np
import pytest

from keras_sam.study import cli, compare
from tests.study.builders import compare_data, compare_model


def test_rho_zero_arms_are_identical_and_the_model_is_left_alone():
    """With rho = 0 SAM's step is the optimizer's: the two arms must agree
    exactly, which they only do from the same weights, batches and dropout."""
    train, test = compare_data()
    model = compare_model()
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
    train, test = compare_data()
    result = compare.compare(
        compare_model(),
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
    # Given one, it trains: test_an_uncompiled_logits_model_takes_a_full_loss_spec
    # (the command passes compare() the model uncompiled, a loss object and an
    # optimizer); an optimizer named by string: the next test.
    train, test = compare_data()
    with pytest.raises(ValueError, match="`loss`"):
        compare.compare(compare_model(compiled=False), train, test, epochs=1)


def test_a_new_optimizer_keeps_the_compiled_loss_and_metrics():
    train, test = compare_data()
    result = compare.compare(
        compare_model(), train, test, epochs=1, optimizer="adam", sharpness_examples=0
    )
    assert result.base.name == "Adam"
    assert result.base.test.keys() == {"loss", "accuracy"}
    assert result.settings["loss"] == (
        "SparseCategoricalCrossentropy(from_logits=True)"
    )
    assert result.settings["optimizer"].startswith("Adam (lr 0.001")


def test_command_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    (x, y), (x_test, y_test) = compare_data()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    compare_model().save(tmp_path / "m.keras")
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
    assert "test loss" in printed
    # Every setting, the defaults included, from the saved compile config.
    settings_line = printed.splitlines()[0]
    for part in ("2 epochs", "batch size 32 (4 steps)",
                 "optimizer SGD (lr 0.05, momentum 0.9)",
                 "loss SparseCategoricalCrossentropy(from_logits=True)",
                 "rho 0.05", "variant SAM", "seed 0"):  # fmt: skip
        assert part in settings_line, settings_line
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["settings"]["epochs"] == 2 and saved["settings"]["batch_size"] == 32
    assert saved["settings"]["learning_rate"] == pytest.approx(0.05)
    assert saved["diverged"] == [] and saved["sam"]["diverged"] is None
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000


def test_command_names_missing_arrays(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 1)))
    compare_model().save(tmp_path / "m.keras")
    code = cli.main(
        ["compare", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz")]
    )
    assert code == 2
    assert "missing ['x_test', 'y_test', 'y_train']" in capsys.readouterr().err


def _save_data(tmp_path, x_scale=1.0, regression=False):
    (x, y), (x_test, y_test) = compare_data()
    if regression:
        y, y_test = x.reshape(64, -1)[:, :1], x_test.reshape(32, -1)[:, :1]
    np.savez(tmp_path / "d.npz", x_train=x * x_scale, y_train=y,
             x_test=x_test * x_scale, y_test=y_test)  # fmt: skip
    return str(tmp_path / "d.npz")


def test_an_uncompiled_logits_model_takes_a_full_loss_spec(tmp_path, capsys):
    data = _save_data(tmp_path)
    model = compare_model(compiled=False)
    model.save(tmp_path / "m.keras")
    (x, y), _ = compare_data()
    logits = model.predict(x, verbose=0).astype("float64")
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.mean(
        np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]
    )  # cross-entropy of the logits, by hand
    code = cli.main(["compare", str(tmp_path / "m.keras"), "--data", data,
                     "--epochs", "1", "--sharpness-examples", "0", "--no-plots",
                     "--loss", "sparse_categorical_crossentropy", "--from-logits",
                     "--lr", "0.02", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "loss SparseCategoricalCrossentropy(from_logits=True)" in printed
    assert "optimizer SGD (lr 0.02, momentum 0.9)" in printed  # --lr applied
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["settings"]["start_loss"] == pytest.approx(expected, rel=1e-4)


def test_loss_specs():
    spec = compare.loss_from_spec("sparse_categorical_crossentropy", True)
    assert isinstance(spec, keras.losses.SparseCategoricalCrossentropy)
    assert spec.get_config()["from_logits"] is True
    plain = compare.loss_from_spec("SparseCategoricalCrossentropy")
    assert plain.get_config()["from_logits"] is False
    text = json.dumps(keras.losses.serialize(
        keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1)
    ))  # fmt: skip
    restored = compare.loss_from_spec(text)
    assert restored.get_config()["label_smoothing"] == pytest.approx(0.1)
    assert compare.describe_loss(restored) == (
        "BinaryCrossentropy(from_logits=True, label_smoothing=0.1)"
    )
    assert compare.loss_from_spec(None) is None
    for bad, logits, message in [
        ("mse", True, "`--from-logits` needs a loss with a from_logits"),
        ("no_such_loss", None, "`loss` must be a Keras loss name"),
        ("{not json", None, "`loss` JSON must be a serialized Keras loss"),
        (None, True, "`--from-logits` needs `--loss NAME`"),
    ]:
        with pytest.raises(ValueError, match=message):
            compare.loss_from_spec(bad, logits)


def test_divergence_rule_on_the_reported_run():
    assert "epoch 3" in compare.divergence([5.4, 3.1, 1.7e12], start_loss=5.4)
    assert compare.divergence([5.4, 40.0, 2.0], start_loss=5.4) is None  # < 10x
    assert "nan" in compare.divergence([5.4, float("nan")], start_loss=5.4)
    assert "inf" in compare.divergence([float("inf")], start_loss=5.4)
    # No starting loss known: only a non-finite loss counts.
    assert compare.divergence([1.7e12], start_loss=None) is None
    assert "nan" in compare.divergence([float("nan")], start_loss=None)


def test_a_diverged_run_is_flagged_in_table_json_and_exit_status(tmp_path, capsys):
    data = _save_data(tmp_path, x_scale=3.0, regression=True)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1))
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.5), "mse")  # lr far past 2 / lambda_max
    model.save(tmp_path / "m.keras")
    code = cli.main(["compare", str(tmp_path / "m.keras"), "--data", data,
                     "--epochs", "3", "--batch-size", "16", "--out",
                     str(tmp_path / "out")])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "DIVERGED" in captured.out and "WARNING: SGD DIVERGED" in captured.out
    assert "diverged (see the table); exit status 1" in captured.err
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert "SGD" in saved["diverged"] and saved["base"]["diverged"]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000


def _arm(name, loss, train_loss, diverged=None):
    return compare.Arm(name=name, test={"loss": loss, "accuracy": 0.625},
                       sharpness=1.25, seconds=2.0, epoch_seconds=0.5,
                       passes_per_step=1.0, train_loss=train_loss,
                       diverged=diverged)  # fmt: skip


def test_plot_shows_settings_test_loss_and_values(tmp_path, monkeypatch):
    import matplotlib

    from keras_sam.study.sweep import plots

    figures = []
    real = plots.subplots

    def spy(*args, **kwargs):
        fig, axes = real(*args, **kwargs)
        figures.append(fig)
        return fig, axes

    monkeypatch.setattr(plots, "subplots", spy)
    # A notebook's backend (here svg) stays: the figure draws through its own
    # canvas, pyplot is never imported for it.
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    settings = dict(epochs=2, batch_size=32, steps=4, optimizer="SGD (lr 0.05)",
                    learning_rate=0.05, loss="MeanSquaredError()", rho=0.05,
                    variant="SAM", seed=0, backend="jax", start_loss=5.4)  # fmt: skip
    result = compare.Comparison(
        base=_arm("SGD", 0.6931, [0.9, 0.7]),
        sam=_arm("SAM (rho=0.05)", float("nan"), [5.4, 1.7e12], "exploded"),
        settings=settings,
    )
    try:
        compare.plot(result, str(tmp_path / "p.png"))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    (figure,) = figures
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[1:] == ["test loss", "test accuracy", "sharpness (lambda_max)",
                          "wall time (s)"]  # fmt: skip
    labels = [text.get_text() for ax in figure.axes[1:] for text in ax.texts]
    assert {"0.6931", "-", "0.625", "1.25", "2"} <= set(labels)
    title = figure._suptitle.get_text()
    assert "batch size 32" in title and "optimizer SGD (lr 0.05)" in title
    assert "loss MeanSquaredError()" in title
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "SAM (rho=0.05) DIVERGED" in legend

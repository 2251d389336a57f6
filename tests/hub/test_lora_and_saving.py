"""LoRA fine-tunes and `.keras` files of SAM-wrapped keras-hub tasks: SAM moves
only what is trainable, a loaded fine-tune resumes as it was (LoRA, frozen
backbone, optimizer state) and equals uninterrupted training; `sharpness`
against a dense Hessian."""

import keras
import numpy as np
import pytest

import keras_sam
from tests.hessian.references import per_example_hessians
from tests.hub import zoo


@pytest.fixture(scope="module")
def initial_weights():
    keras.utils.set_random_seed(0)
    return {name: zoo.build(name).get_weights() for name in ("bert_lora", "vit")}


def adam(task):
    # The task's compile (its loss and metrics), with a step large enough to
    # see, and optimizer state that a resume must restore.
    task.compile(optimizer=keras.optimizers.Adam(0.01))
    return task


def numpy(weights):
    return [keras.ops.convert_to_numpy(w) for w in weights]


def test_lora_sam_moves_only_the_trainable_weights(initial_weights):
    task = zoo.build("bert_lora", initial_weights["bert_lora"])
    lora = [w for w in task.trainable_weights if "lora_kernel" in w.path]
    # The query and value projections' factors and biases (their kernels are
    # frozen), the classifier's kernel and bias.
    assert len(lora) == 4 and len(task.trainable_weights) == 8
    # Mid fine-tune: LoRA's B factors start at zero, which leaves A without a
    # gradient on the first step.
    rng = np.random.default_rng(0)
    for weight in lora:
        if "lora_kernel_b" in weight.path:
            weight.assign(rng.normal(size=weight.shape).astype("float32"))
    frozen = [w for w in task.weights if not w.trainable]
    frozen_before, trainable_before = numpy(frozen), numpy(task.trainable_weights)
    model = keras_sam.sam(adam(task))
    assert len(model.trainable_weights) == 8
    x, y = zoo.raw_data("bert_lora")
    model.fit(x, y, batch_size=4, verbose=0)
    for before, weight in zip(frozen_before, frozen):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(weight))
    for before, weight in zip(trainable_before, task.trainable_weights):
        assert not np.array_equal(before, keras.ops.convert_to_numpy(weight)), (
            weight.path
        )


@pytest.mark.parametrize("name", ("bert_lora", "vit"))
def test_save_load_resume_equals_uninterrupted(name, initial_weights, tmp_path):
    x, y = zoo.raw_data(name)
    first = keras_sam.sam(adam(zoo.build(name, initial_weights[name])))
    first.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "task.keras")
    loaded = keras.saving.load_model(tmp_path / "task.keras")
    # The uninterrupted run: the saved task's second epoch, in the same
    # objects (no EMA, no shuffling: two fits of one epoch are one of two).
    saved = numpy(first.optimizer.variables)
    straight = first
    straight.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert zoo.max_difference(straight.weights, initial_weights[name]) > 1e-3
    assert type(loaded).__name__ == type(first).__name__
    assert [w.shape for w in loaded.trainable_weights] == [
        w.shape for w in first.trainable_weights
    ]
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 2
    assert zoo.max_difference(loaded.optimizer.variables, saved) == 0
    # Raw inputs again: the preprocessor (its vocabulary) came back with it.
    loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert zoo.max_difference(loaded.weights, straight.weights) < 1e-6
    if name == "bert_lora":
        # keras-hub's LoRA record: the loaded backbone saves its LoRA weights.
        loaded.backbone.save_lora_weights(str(tmp_path / "task.lora.h5"))


def test_a_changed_task_is_refused_with_what_to_call(initial_weights, tmp_path):
    model = keras_sam.sam(zoo.build("bert_lora", initial_weights["bert_lora"]))
    config = model.get_config()
    config["task_trainable_state"]["layer_count"] += 1
    with pytest.raises(ValueError, match="enable_lora"):
        type(model).from_config(config)


def test_sharpness_against_a_dense_hessian(initial_weights):
    task = zoo.build("bert_lora", initial_weights["bert_lora"])
    model = keras_sam.sam(task)
    x, y = zoo.raw_data("bert_lora")
    # Curvature runs the model itself: it takes preprocessed inputs.
    x, y, _ = keras.utils.unpack_x_y_sample_weight(task.preprocessor(x, y))
    x = {k: keras.ops.convert_to_numpy(v) for k, v in x.items()}
    y = keras.ops.convert_to_numpy(y)
    hessian = per_example_hessians(task, x, y).mean(axis=0)
    expected = np.linalg.eigvalsh(hessian)[-1]
    sharpness = keras_sam.hessian.sharpness(model, (x, y), tol=1e-6)
    np.testing.assert_allclose(sharpness, expected, rtol=1e-4)


def test_load_before_keras_hub_has_a_wrapper_class(initial_weights):
    # `load_model` in a fresh process finds `keras_sam>SAMTask` registered by
    # `import keras_sam` alone; that stand-in builds the real class.
    from keras_sam import _keras_hub

    model = keras_sam.sam(zoo.build("bert_lora", initial_weights["bert_lora"]))
    rebuilt = _keras_hub._SAMTaskLoader.from_config(model.get_config())
    assert type(rebuilt) is type(model)
    assert [w.shape for w in rebuilt.trainable_weights] == [
        w.shape for w in model.trainable_weights
    ]
    assert rebuilt.rho == model.rho

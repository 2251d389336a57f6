"""`keras_sam.sam(task)` on keras-hub tasks: the task's pipeline (raw strings,
images of any size, `tf.data` of raw samples), its compile defaults, summary
and API; rho = 0 against the plain task. Few fits: each one costs seconds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from tests.hub import zoo


@pytest.fixture(scope="module")
def initial_weights():
    """One set of initial weights per task; each test builds fresh twins."""
    keras.utils.set_random_seed(0)
    return {name: zoo.build(name).get_weights() for name in ("bert", "gpt2", "vit")}


def sgd(task, learning_rate=0.5):
    # The task's own compile: its default loss and metrics.
    task.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return task


def test_text_classifier_on_raw_strings_and_tf_data(initial_weights):
    plain = sgd(zoo.build("bert", initial_weights["bert"]))
    wrapped = sgd(zoo.build("bert", initial_weights["bert"]))
    model = keras_sam.sam(wrapped, rho=0.0)
    x, y = zoo.raw_data("bert")
    plain.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    # The same batches as a `tf.data` pipeline of raw strings.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    history = model.fit(dataset, epochs=2, verbose=0)
    assert {"loss", "perturbed_loss"} <= set(history.history)
    assert zoo.max_difference(plain.weights, initial_weights["bert"]) > 1e-3
    assert zoo.max_difference(plain.weights, wrapped.weights) < 1e-6

    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    expected = plain.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert logs.keys() == expected.keys() == {"loss", "sparse_categorical_accuracy"}
    np.testing.assert_allclose(list(logs.values()), list(expected.values()), 1e-5)
    predictions = model.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(
        predictions, plain.predict(x, batch_size=4, verbose=0), atol=1e-5
    )
    assert "perturbed_loss" in model.train_on_batch(x[:4], y[:4], return_dict=True)
    assert model.test_on_batch(x[:4], y[:4], return_dict=True).keys() == logs.keys()
    assert model.predict_on_batch(x[:4]).shape == (4, 2)
    with pytest.raises(ValueError, match="preprocess"):
        model(x[:4])


def test_image_classifier_on_images_of_another_size(initial_weights):
    plain = sgd(zoo.build("vit", initial_weights["vit"]))
    wrapped = sgd(zoo.build("vit", initial_weights["vit"]))
    model = keras_sam.sam(wrapped, rho=0.0)
    x, y = zoo.raw_data("vit")  # 24 x 20 images; the model takes 16 x 16
    plain.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert "perturbed_loss" in history.history
    assert zoo.max_difference(plain.weights, initial_weights["vit"]) > 1e-3
    assert zoo.max_difference(plain.weights, wrapped.weights) < 1e-6
    np.testing.assert_allclose(
        model.predict(x, batch_size=4, verbose=0),
        plain.predict(x, batch_size=4, verbose=0),
        atol=1e-5,
    )


def test_causal_lm_fits_and_generates(initial_weights):
    # The causal LM's default compile: Adam, its masked loss and metric.
    plain = zoo.build("gpt2", initial_weights["gpt2"])
    wrapped = zoo.build("gpt2", initial_weights["gpt2"])
    model = keras_sam.sam(wrapped, rho=0.0)
    x, _ = zoo.raw_data("gpt2")
    plain.fit(x, batch_size=4, shuffle=False, verbose=0)
    history = model.fit(x, batch_size=4, shuffle=False, verbose=0)
    assert "perturbed_loss" in history.history
    assert zoo.max_difference(plain.weights, initial_weights["gpt2"]) > 1e-5
    assert zoo.max_difference(plain.weights, wrapped.weights) < 1e-6
    # The task's own API through the wrapper: compile's sampler, generate
    # (not run: compiling the generate loop costs minutes here).
    model.compile(sampler="greedy")
    assert type(wrapped.sampler).__name__ == "GreedySampler"
    assert model.generate.__self__ is wrapped
    assert model.generate.__func__ is type(wrapped).generate


def test_causal_lm_generates_as_the_plain_task(initial_weights):
    # `generate` through the wrapper (the task's, with the sampler that the
    # wrapper's compile set) against a plain task on the same weights, before
    # and after a SAM fit; greedy, so the output is a function of the weights,
    # and to the full length (this tiny model's first token is often the end
    # token).
    plain = zoo.build("gpt2", initial_weights["gpt2"])
    wrapped = zoo.build("gpt2", initial_weights["gpt2"])
    model = keras_sam.sam(wrapped, rho=0.05)
    plain.compile(sampler="greedy")
    model.compile(optimizer=keras.optimizers.SGD(0.5), sampler="greedy")
    prompts = ["air", "plane at"]
    options = {"max_length": zoo.SEQUENCE_LENGTH, "stop_token_ids": None}
    before = model.generate(prompts, **options)
    assert list(before) == list(plain.generate(prompts, **options))
    assert all(b.startswith(p) and len(b) > len(p) for b, p in zip(before, prompts))

    x, _ = zoo.raw_data("gpt2")
    history = model.fit(x, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.array(history.history["perturbed_loss"]) > 0)
    trained = wrapped.get_weights()
    assert zoo.max_difference(trained, initial_weights["gpt2"]) > 1e-3
    after = model.generate(prompts, **options)
    assert list(after) != list(before)  # generated by the trained weights
    # The plain task (never fit) with the SAM-trained weights generates the
    # same; its generate function is already compiled.
    plain.set_weights(trained)
    assert zoo.max_difference(plain.weights, wrapped.weights) == 0
    assert list(after) == list(plain.generate(prompts, **options))


def test_rho_zero_with_the_tasks_unseeded_dropout():
    dropout = 0.3
    # keras-hub's Dropout layers take no seed: both passes must see one mask.
    keras.utils.set_random_seed(1)
    plain = sgd(zoo.bert_classifier(dropout=dropout))
    keras.utils.set_random_seed(1)  # the same layer seeds as `plain`
    wrapped = sgd(zoo.bert_classifier(dropout=dropout))
    model = keras_sam.sam(wrapped, rho=0.0)
    x, y = zoo.raw_data("bert")
    keras.utils.set_random_seed(2)
    plain.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    keras.utils.set_random_seed(2)
    history = model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        history.history["perturbed_loss"], history.history["loss"], rtol=1e-6
    )
    assert zoo.max_difference(plain.weights, wrapped.weights) < 1e-6


def test_compile_defaults_summary_and_task_api(initial_weights):
    task = zoo.build("bert", initial_weights["bert"])
    default_loss, default_optimizer = type(task.loss), type(task.optimizer)
    model = keras_sam.sam(task)
    # A compiled task passes on its optimizer object.
    assert model.optimizer is task.optimizer
    model.compile(optimizer="sgd")  # the loss and metrics: the task's defaults
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert isinstance(model.loss, default_loss)
    assert model.loss.get_config()["from_logits"]
    model.compile()
    assert isinstance(model.optimizer, default_optimizer)
    assert model.optimizer is task.optimizer

    uncompiled = keras_sam.sam(zoo.bert_classifier_uncompiled())
    assert not uncompiled.compiled
    uncompiled.compile()
    assert isinstance(uncompiled.loss, default_loss)

    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines)
    assert "Preprocessor" in text and "bert_tokenizer" in text
    assert "bert_backbone" in text
    assert model.backbone is task.backbone
    assert model.preprocessor is task.preprocessor
    preprocessor = model.preprocessor
    model.preprocessor = None  # keras-hub's way to feed preprocessed inputs
    assert task.preprocessor is None
    model.preprocessor = preprocessor
    assert task.preprocessor is preprocessor


def test_keras_models_keep_the_plain_wrapper():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert type(keras_sam.sam(model)) is keras_sam.SAMWrapper

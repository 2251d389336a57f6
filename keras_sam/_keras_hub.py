"""keras-hub tasks under SAM: the task's preprocessing, compile defaults,
summary, public API and trainable (LoRA) state.

`keras_sam.sam(task)` on a keras-hub `Task` (any keras-hub `PipelineModel`)
returns a `SAMTask`: a `SAMWrapper` with keras-hub's `PipelineModel` methods,
so `fit`, `evaluate`, `predict` and the `*_on_batch` methods run the task's
preprocessor on raw inputs (strings, images of any size, `tf.data` of raw
samples) exactly as the task does, and the SAM step trains on what it yields.

This module never imports keras-hub itself: a model is a keras-hub one only if
keras-hub is already imported (`sys.modules`), and the `SAMTask` class is
built on first use.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import keras

from keras_sam import _compat

#: The name `SAMTask` models are saved under. `_SAMTaskLoader` answers to it
#: until keras-hub is imported, so `load_model` finds it from `import keras_sam`.
REGISTERED_NAME = "SAMTask"
_PACKAGE = "keras_sam"
#: The key of the task's trainable state (LoRA, frozen layers) in the config.
_TRAINABLE_STATE = "task_trainable_state"
# Names a wrapper must never forward: they are the wrapper's own or the
# task class's constructors.
_NOT_FORWARDED = frozenset({"from_preset", "presets", "from_config", "get_config"})

_wrapper_classes: dict[type, type] = {}


def is_task(model: Any) -> bool:
    """Whether `model` is a keras-hub `PipelineModel` (a `Task`).

    Without importing keras-hub: a keras-hub model exists only once keras-hub
    is imported.
    """
    if "keras_hub" not in sys.modules:
        return False
    from keras_hub.src.utils.pipeline_model import PipelineModel

    return isinstance(model, PipelineModel)


def wrapper_class(model: keras.Model) -> type:
    """The `SAMWrapper` class for `model`: a `SAMTask` for a keras-hub task."""
    from keras_sam.sam_model import SAMWrapper

    if not is_task(model):
        return SAMWrapper
    task_class = type(model)
    if task_class not in _wrapper_classes:
        _wrapper_classes[task_class] = _forwarding_class(task_class)
    return _wrapper_classes[task_class]


def _forwarding_class(task_class: type) -> type:
    """A `SAMTask` that forwards the task's own public API (`backbone`,
    `preprocessor`, `generate`, `save_to_preset`, ...) to the task."""
    base = _sam_task_class()
    names = set()
    for klass in task_class.__mro__:
        if not klass.__module__.startswith("keras_hub."):
            continue
        names.update(
            name
            for name in vars(klass)
            if not name.startswith("_")
            and name not in _NOT_FORWARDED
            and not hasattr(base, name)
        )
    attributes = {name: _Forwarded(name) for name in sorted(names)}
    attributes["_forwarded_names"] = frozenset(names)
    attributes["__module__"] = __name__
    cls = type(f"SAM{task_class.__name__}", (base,), attributes)
    return keras.saving.register_keras_serializable(_PACKAGE, REGISTERED_NAME)(cls)


class _Forwarded:
    """The task's attribute `name`, read and written through the wrapper."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, wrapper, owner=None):
        if wrapper is None:
            return self
        return getattr(wrapper.model, self.name)

    def __set__(self, wrapper, value):
        setattr(wrapper.model, self.name, value)


#: The keras-hub `PipelineModel` methods a `SAMTask` takes over: they turn
#: raw inputs into a dataset mapped through `preprocess_samples`, then call
#: the Keras trainer's method through `super()`.
PIPELINE_METHODS = (
    "__call__",
    "fit",
    "evaluate",
    "predict",
    "train_on_batch",
    "test_on_batch",
    "predict_on_batch",
)

_sam_task: list[type] = []


def _sam_task_class() -> type:
    if _sam_task:
        return _sam_task[0]
    from keras_sam.sam_model import SAMWrapper

    class SAMTask(SAMWrapper):
        """A `SAMWrapper` around a keras-hub task that keeps its pipeline.

        Made by `keras_sam.sam(task)`. `fit`, `evaluate` and `predict` take
        what the task takes (raw strings, images, `tf.data` of raw samples)
        and run the task's preprocessor; `compile()` fills in the task's
        defaults; `summary()` is the task's; the task's public attributes and
        methods (`backbone`, `preprocessor`, `generate`, ...) are reachable on
        the wrapper. Saved and loaded as a `.keras` file, it restores the
        task's trainable state (LoRA, frozen layers) before its weights and
        optimizer state.
        """

        _forwarded_names: frozenset[str] = frozenset()

        def __init__(self, model: keras.Model, **kwargs: Any):
            super().__init__(model, **kwargs)
            self._lora_weights = _LoraWeights(model)

        def __setattr__(self, name, value):
            # Keras tracks a layer set as an attribute; a forwarded one (the
            # preprocessor) belongs to the task, not to the wrapper.
            if name in type(self)._forwarded_names:
                setattr(self.model, name, value)
                return
            super().__setattr__(name, value)

        def preprocess_samples(self, x, y=None, sample_weight=None):
            return self.model.preprocess_samples(x, y, sample_weight)

        def compile(self, *args: Any, **kwargs: Any) -> None:
            """Compiles like the task: arguments left out get the task's
            defaults (its optimizer, loss, metrics, sampler). The task is
            compiled too, with the same optimizer object."""
            if args or not _compiled_with(self.model, kwargs):
                self.model.compile(*args, **kwargs)
            arguments = _compat.compile_arguments(self.model)
            if arguments is None:
                raise ValueError(
                    f"{type(self.model).__name__}.compile did not compile the "
                    f"task in Keras {keras.version()}; compile the task, then "
                    "wrap it with `keras_sam.sam(task)`."
                )
            # The optimizer object itself (its state; a `LossScaleOptimizer`
            # where the task's compile chose one).
            arguments["optimizer"] = self.model.optimizer
            super().compile(**arguments, auto_scale_loss=False)

        def compile_from_config(self, config: dict[str, Any]) -> None:
            # Keras skips a model whose `compile` is its own (with a warning);
            # the saved arguments are Keras's, so they compile the task too.
            self.compile(**keras.saving.deserialize_keras_object(config))
            if self.built:
                self.optimizer.build(self.trainable_variables)

        def summary(self, *args: Any, **kwargs: Any) -> None:
            """The task's summary (its preprocessor, layers and parameters)."""
            return self.model.summary(*args, **kwargs)

        def get_config(self) -> dict[str, Any]:
            config = super().get_config()
            config[_TRAINABLE_STATE] = trainable_state(self.model)
            return config

        @classmethod
        def from_config(cls, config, custom_objects=None):
            config = dict(config)
            model = config.pop("model")
            if isinstance(model, dict):
                model = keras.saving.deserialize_keras_object(
                    model, custom_objects=custom_objects
                )
            state = config.pop(_TRAINABLE_STATE, None)
            if state is not None:
                restore_trainable_state(model, state)
            return wrapper_class(model)(model, **config)

    for name in PIPELINE_METHODS:
        setattr(SAMTask, name, _pipeline_method(name, SAMTask))
    _sam_task.append(SAMTask)
    return SAMTask


def _pipeline_method(name: str, owner: type):
    """keras-hub's `PipelineModel.<name>`, with its `super()` resolved from
    `owner`.

    A `SAMTask` cannot subclass `PipelineModel`: keras-hub rewrites
    `PipelineModel.__bases__` whenever one is built (`Functional` is added by
    each functional task and removed by each non-functional instance), which
    would strip `Functional` from every task built before and add it to the
    wrapper. So the wrapper takes the methods instead: each is rebuilt with
    the `__class__` cell that its zero-argument `super()` reads pointing to
    `owner`, so it preprocesses exactly as keras-hub does and then calls the
    wrapper's Keras trainer.
    """
    from keras_hub.src.utils.pipeline_model import PipelineModel

    function = PipelineModel.__dict__[name]
    cells = tuple(
        types.CellType(owner) if free == "__class__" else cell
        for free, cell in zip(function.__code__.co_freevars, function.__closure__ or ())
    )
    method = types.FunctionType(
        function.__code__, function.__globals__, name, function.__defaults__, cells
    )
    method.__kwdefaults__ = function.__kwdefaults__
    method.__doc__ = function.__doc__
    method.__qualname__ = f"{owner.__name__}.{name}"
    return method


@keras.saving.register_keras_serializable(_PACKAGE, REGISTERED_NAME)
class _SAMTaskLoader:
    """What `load_model` finds under `SAMTask` before keras-hub is imported:
    it builds the real class (importing keras-hub, which the saved task's
    own config needs anyway)."""

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        import keras_hub  # noqa: F401  (the saved task is a keras-hub model)

        return _sam_task_class().from_config(config, custom_objects=custom_objects)


class _LoraWeights(keras.layers.Layer):
    """Saves and loads the raw weights of a task's LoRA layers (the kernel
    without the LoRA product, and the factors).

    Keras saves a LoRA layer's kernel with the LoRA product merged in and
    loads it with both factors set to zero: the same function, but a resumed
    fine-tune would have no LoRA gradient (each factor's is proportional to
    the other). The wrapper holds this object under a private name, which
    Keras's saving visits after the task, so its `load_own_variables` runs
    after the layers' own and puts the saved raw weights back.
    """

    def __init__(self, task: keras.Model):
        super().__init__(trainable=False, name="lora_weights")
        # Not a tracked reference: the task's weights stay the task's.
        self._task = lambda: task
        self.built = True

    def _lora_layers(self) -> list[keras.Layer]:
        return [
            layer
            for layer in _model_layers(self._task())
            if getattr(layer, "lora_enabled", False)
        ]

    def save_own_variables(self, store):
        for i, layer in enumerate(self._lora_layers()):
            for j, weight in enumerate(layer.weights):
                store[f"{i}_{j}"] = weight

    def load_own_variables(self, store):
        for i, layer in enumerate(self._lora_layers()):
            for j, weight in enumerate(layer.weights):
                key = f"{i}_{j}"
                if key in store.keys():
                    weight.assign(store[key])


def _compiled_with(task: keras.Model, kwargs: dict[str, Any]) -> bool:
    # `keras_sam.sam(task)` compiles the wrapper with the task's own compile
    # arguments: compiling the task again would reset what its `compile` sets
    # besides Keras's arguments (a causal LM's sampler).
    arguments = _compat.compile_arguments(task)
    if arguments is None or kwargs.get("optimizer") is not task.optimizer:
        return False
    return all(
        key == "auto_scale_loss" or arguments.get(key) is value
        for key, value in kwargs.items()
    )


def trainable_state(task: keras.Model) -> dict[str, Any]:
    """What `load_model` cannot rebuild from a keras-hub task's config: its
    LoRA layers and the trainable flags of its layers and weights.

    A task is rebuilt from its constructor arguments, so `enable_lora` and
    `layer.trainable = False` are lost on load (upstream keras-hub behaviour):
    the loaded task would train its frozen backbone, and the optimizer state,
    built for fewer variables, would be skipped. Layers and weights are named
    by their position, which a task rebuilt from the same config repeats.
    """
    layers = _model_layers(task)
    lora = [
        [i, int(layer.lora_rank), _number(getattr(layer, "lora_alpha", None))]
        for i, layer in enumerate(layers)
        if getattr(layer, "lora_enabled", False)
    ]
    return {
        "lora": lora,
        "frozen_layers": [i for i, layer in enumerate(layers) if not layer.trainable],
        "trainable_weights": [i for i, w in enumerate(task.weights) if w.trainable],
        "layer_count": len(layers),
    }


def restore_trainable_state(task: keras.Model, state: dict[str, Any]) -> None:
    """Applies `trainable_state(original)` to `task`, rebuilt from the same
    config, before its weights (and the optimizer state) are loaded."""
    layers = _model_layers(task)
    if len(layers) != state["layer_count"]:
        raise ValueError(
            f"Cannot restore the trainable state of {task.name!r}: it has "
            f"{len(layers)} layers, the saved task had {state['layer_count']}. "
            "Rebuild the task, call `task.backbone.enable_lora(rank)` (and "
            "freeze what was frozen), then `keras_sam.sam(task)` and "
            "`load_weights`."
        )
    for index, rank, alpha in state["lora"]:
        layer = layers[index]
        if getattr(layer, "lora_enabled", False):
            continue
        if alpha is None:
            layer.enable_lora(rank)
        else:
            layer.enable_lora(rank, lora_alpha=alpha)
    lora_layers = [layers[index] for index, _, _ in state["lora"]]
    backbone = getattr(task, "backbone", None)
    if lora_layers and backbone is not None and hasattr(backbone, "enable_lora"):
        _restore_backbone_lora_record(backbone, lora_layers, state["lora"][0][1])
    frozen = set(state["frozen_layers"])
    for i, layer in enumerate(layers):
        layer.trainable = i not in frozen
    trainable = set(state["trainable_weights"])
    for i, weight in enumerate(task.weights):
        weight.trainable = i in trainable


def _model_layers(task: keras.Model) -> list[keras.Layer]:
    # Without the preprocessor's: it builds sublayers on first use (a BERT
    # tokenizer's packer), which a freshly loaded task does not have yet.
    preprocessor = getattr(task, "preprocessor", None)
    skipped = set()
    if isinstance(preprocessor, keras.Layer):
        skipped = {id(layer) for layer in _compat.flatten_layers(preprocessor)}
    return [layer for layer in _compat.flatten_layers(task) if id(layer) not in skipped]


def _restore_backbone_lora_record(backbone, lora_layers, rank) -> None:
    # `Backbone.save_lora_weights` reads which layers `enable_lora` chose (by
    # position among the backbone's layers with weights) and the rank.
    with_weights = [
        layer
        for layer in _compat.flatten_layers(backbone)
        if layer is not backbone and layer.weights
    ]
    ids = {id(layer) for layer in lora_layers}
    indices = [i for i, layer in enumerate(with_weights) if id(layer) in ids]
    if indices:
        backbone._lora_enabled_layers = indices
        backbone._lora_rank = rank


def _number(value):
    return None if value is None else float(value)

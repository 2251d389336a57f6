"""`SAMModel`: a `keras.Model` whose `train_step` does the SAM update."""

from __future__ import annotations

from typing import Any

import keras

from keras_sam import (
    _compat,
    _keras_hub,
    _trackers,
    _validation,
    backend,
    perturbations,
    variants,
)
from keras_sam.variants import schedules

__all__ = ["FunctionalSAMModel", "SAMModel", "SAMWrapper", "sam"]

_RANDOM_STATE_KEY = "random_state_"


def _is_functional_call(args: tuple, kwargs: dict) -> bool:
    return (
        len(args) == 2
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(keras.Model):
    """A `keras.Model` trained with Sharpness-Aware Minimization.

    Each training step takes the gradient g at the weights w, forms the
    ascent step eps = rule(g, w, rho), and lets the compiled optimizer apply
    the gradient taken at w + eps. Everything else is plain Keras: any
    optimizer, loss, metric, callback, `jit_compile`, mixed precision.

    ```python
    inputs = keras.Input((784,))
    hidden = keras.layers.Dense(512, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(hidden)
    model = keras_sam.SAMModel(inputs, outputs, rho=0.05)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=10)  # logs `loss` and `perturbed_loss`
    model.eps_batch_size, model.skipped_steps  # (32, 0)
    ```

    Like `keras.Model`, it can also be subclassed with a custom `call`.

    Args:
        rho: radius of the ascent step (>= 0; 0 is the base optimizer's step),
            or a `keras.optimizers.schedules.LearningRateSchedule` / callable
            of the optimizer step (e.g. `keras_sam.variants.ProportionalRho`).
        perturbation: ``"sam"`` (eps = rho g / ||g||), ``"usam"``
            (eps = rho g), ``"asam"`` (eps = rho T^2 g / ||T g||, T = |w| + eta)
            or a `keras_sam.perturbations.Perturbation`.
        micro_batch_size: if set, m-sharpness: each micro-batch of this many
            examples gets eps from its own gradient, and the perturbed
            gradients are averaged. A batch it does not divide (a partial
            last batch) ends with a smaller micro-batch; each perturbed
            gradient is weighted by its micro-batch's size.
        replica_eps: under a `tf.distribute` strategy with several replicas,
            ``"synchronized"`` (default) forms eps from the all-reduced
            gradient, so training equals single-device SAM on the global
            batch; ``"per_replica"`` forms it from each replica's own
            gradient (m-sharpness with m = per-replica batch, as in the
            code of Shin et al. 2023, arXiv 2311.17539). `eps_batch_size` is
            the effective m.
        variant: None (plain SAM), a registered name such as ``"looksam"``
            (its defaults: see docs/variants.md) or a
            `keras_sam.variants.Variant`: how g and the perturbed gradient
            become the update, and which steps
            skip the second pass.
        clip_eps_gradient: where the compiled optimizer clips
            (``clipnorm``, ``clipvalue``, ``global_clipnorm``). False
            (default): Keras clips the gradient it applies, the perturbed
            one, and eps is formed from the unclipped clean gradient. True:
            the clean gradient is clipped the same way before eps is formed
            too (a `LossScaleOptimizer` clips as its inner optimizer, a
            `MultiOptimizer` as each variable's sub-optimizer). With
            normalized ``"sam"`` and ``global_clipnorm`` the two agree (eps
            does not depend on g's length); ``clipnorm``, ``clipvalue`` and
            ``"usam"`` change eps.

    Raises:
        ValueError: for a bad option, naming it and the accepted values: a
            `rho` that is neither a number >= 0 nor a schedule, an unknown
            `perturbation` or `variant`, a
            `micro_batch_size` that is not None or a positive integer, a
            `replica_eps` other than ``"synchronized"`` / ``"per_replica"``,
            a non-bool `clip_eps_gradient`.
        NotImplementedError: when training on a Keras backend other than
            TensorFlow, JAX or PyTorch.

    Attributes:
        eps_batch_size: how many examples' gradient formed each eps (the m
            of m-sharpness) in the latest `fit`: the largest, where a partial
            last batch had fewer; None before training.
        skipped_steps: how many training steps were skipped because the
            loss-scale optimizer of a ``mixed_float16`` model met a
            non-finite gradient (clean or perturbed), since the model was
            created. Skipped steps leave the logged means alone.
        gradient_passes: forward-backward passes over a batch taken by
            training since the model was created (2 per SAM step, 1 where a
            variant skips the second pass).
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        # Like `keras.Model(inputs, outputs)`, which returns a `Functional`:
        # route functional construction to a class that already has
        # `Functional` among its bases, so Keras never rewrites the bases of
        # `SAMModel` itself and subclassing it keeps working.
        if cls is SAMModel and _is_functional_call(args, kwargs):
            cls = FunctionalSAMModel
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        *args: Any,
        rho: float = 0.05,
        perturbation: str | perturbations.Perturbation = "sam",
        micro_batch_size: int | None = None,
        replica_eps: str = "synchronized",
        variant: str | variants.Variant | None = None,
        clip_eps_gradient: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.rho = schedules.validate_rho(rho)
        self.perturbation = perturbations.get(perturbation)
        self.micro_batch_size = _validation.positive_int(
            micro_batch_size, "micro_batch_size", allow_none=True
        )
        self.replica_eps = _validation.one_of(
            replica_eps, "replica_eps", backend.REPLICA_EPS_MODES
        )
        self.clip_eps_gradient = _validation.boolean(
            clip_eps_gradient, "clip_eps_gradient"
        )
        self.perturbed_loss_tracker = keras.metrics.Mean(name="perturbed_loss")
        # Updated by the step, kept out of the logs (see the properties).
        self.skipped_steps_tracker = _trackers.StepCounter(name="skipped_steps")
        self.eps_batch_size_tracker = _trackers.RunningMax(name="eps_batch_size")
        self.gradient_pass_counter = _trackers.StepCounter(name="gradient_passes")
        self.variant = variants.get(variant)
        self.variant_state: list[keras.Variable] | None = None
        if self.variant is not None and self.variant.random:
            self.variant_seed = keras.random.SeedGenerator(self.variant.seed)
        else:
            self.variant_seed = None
        if self.built:
            self._build_variant_state()

    @property
    def skipped_steps(self) -> int:
        return int(self.skipped_steps_tracker.result())

    @property
    def eps_batch_size(self) -> int | None:
        return int(self.eps_batch_size_tracker.result()) or None

    @property
    def gradient_passes(self) -> float:
        return float(self.gradient_pass_counter.result())

    def _build_variant_state(self):
        # Needs the trainable weights: a subclassed model is "built" before
        # its layers are (they build on the first call).
        if self.variant_state is not None or self.variant is None:
            return
        if not self.trainable_variables:
            return
        shapes = self.variant.state_shapes(self.trainable_variables)
        # Created once the trainable weights exist, possibly after `build`.
        with _compat.unlocked_tracker(self):
            # Steps taken, for the variant: `optimizer.iterations` advances
            # by the number of replicas per step under MirroredStrategy
            # (Keras 3.15).
            self.variant_step = self.add_weight(
                shape=(),
                initializer="zeros",
                dtype="int",
                trainable=False,
                aggregation="only_first_replica",
                name="variant_step",
            )
            self.variant_state = [
                self.add_weight(
                    shape=shape,
                    initializer="zeros",
                    dtype=dtype,
                    trainable=False,
                    autocast=False,
                    aggregation="only_first_replica",
                    name=f"variant_state_{i}",
                )
                for i, (shape, dtype) in enumerate(shapes)
            ]

    def make_train_function(self, force: bool = False):
        # Called at the start of every `fit` (and `train_on_batch`).
        self.eps_batch_size_tracker.reset_state()
        backend.module().prepare_train_function(self)
        return super().make_train_function(force=force)

    def train_step(self, *args):
        # (data) on TensorFlow and PyTorch, (state, data) on JAX.
        return backend.module().train_step(self, *args)

    # A private Keras hook (`_compat.SYMBOLIC_BUILD_HOOK`): the backend's
    # build before `fit` (TensorFlow's from a worker-local batch).
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        build = super()._maybe_symbolic_build
        return backend.module().symbolic_build(self, build, iterator, data_batch)

    # A private Keras hook (`_compat.BUILD_HOOK`): Keras's JAX trainer calls
    # it directly (not through `_maybe_symbolic_build`) before it gathers the
    # stateless state, so a subclassed model's variant state must exist by
    # then (TensorFlow's calls it in the strategy's scope).
    def _symbolic_build(self, iterator=None, data_batch=None):
        result = super()._symbolic_build(iterator=iterator, data_batch=data_batch)
        self._build_variant_state()
        return result

    @property
    def metrics(self):
        # The perturbed loss is a training log only, so that `evaluate`
        # reports just what the user compiled; the step's own trackers are
        # attributes, not logs.
        own = (
            self.perturbed_loss_tracker,
            self.skipped_steps_tracker,
            self.eps_batch_size_tracker,
            self.gradient_pass_counter,
        )
        return [m for m in super().metrics if not any(m is o for o in own)]

    @property
    def metrics_variables(self):
        # The step's own trackers travel with the other metrics' state in
        # stateless (JAX) steps.
        own = (
            self.perturbed_loss_tracker,
            self.skipped_steps_tracker,
            self.eps_batch_size_tracker,
            self.gradient_pass_counter,
        )
        return super().metrics_variables + [v for m in own for v in m.variables]

    def reset_metrics(self):
        super().reset_metrics()
        self.perturbed_loss_tracker.reset_state()

    def _random_states(self) -> list[keras.Variable]:
        # Seed-generator states (dropout and other random layers): state that
        # Keras does not save with the weights.
        weights = {id(v) for v in self.weights}
        return [v for v in self.non_trainable_variables if id(v) not in weights]

    def save_own_variables(self, store):
        """Saves the model's own variables and the random-layer seed states,
        so that training resumed from a saved model draws the same dropout
        masks as uninterrupted training."""
        super().save_own_variables(store)
        for i, state in enumerate(self._random_states()):
            store[f"{_RANDOM_STATE_KEY}{i}"] = state

    def load_own_variables(self, store):
        if self.built:
            self._build_variant_state()
        own = {k: store[k] for k in store.keys() if not k.startswith(_RANDOM_STATE_KEY)}
        super().load_own_variables(own)
        saved = [k for k in store.keys() if k.startswith(_RANDOM_STATE_KEY)]
        states = self._random_states()
        if len(saved) == len(states):
            for i, state in enumerate(states):
                state.assign(store[f"{_RANDOM_STATE_KEY}{i}"])

    def get_compile_config(self) -> dict[str, Any] | None:
        # Keras on PyTorch saves its optimizers under their backend class
        # (module keras.src.backend.torch.optimizers...), which another
        # backend would load as a torch optimizer: save the public class.
        return _backend_neutral(super().get_compile_config())

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            rho=schedules.serialize_rho(self.rho),
            perturbation=perturbations.serialize(self.perturbation),
            micro_batch_size=self.micro_batch_size,
            replica_eps=self.replica_eps,
            variant=variants.serialize(self.variant),
            clip_eps_gradient=self.clip_eps_gradient,
        )
        return config


def _backend_neutral(config: Any) -> Any:
    if isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and module.startswith("keras.src.backend."):
            if ".optimizers" in module:
                config = dict(config, module="keras.optimizers")
        return {k: _backend_neutral(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_backend_neutral(v) for v in config]
    return config


@keras.saving.register_keras_serializable(package="keras_sam")
class FunctionalSAMModel(SAMModel, _compat.Functional):
    """What `SAMModel(inputs, outputs)` returns: a functional `SAMModel`."""


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMWrapper(SAMModel):
    """A `SAMModel` around an existing Keras model, sharing its weights.

    Made by `keras_sam.sam`; usable for any built model: Sequential,
    functional or subclassed.
    """

    def __init__(self, model: keras.Model, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        # A built inner model means the wrapper has all its variables; this
        # also lets `load_model` restore the optimizer state.
        self.built = model.built
        if self.built:
            self._build_variant_state()

    def call(self, inputs, training=None, **kwargs):
        return self.model(inputs, training=training, **kwargs)

    def build(self, input_shape=None):
        if not self.model.built and input_shape is not None:
            self.model.build(input_shape)
        self.built = True

    def compute_output_spec(self, inputs, training=None, **kwargs):
        return self.model.compute_output_spec(inputs, training=training, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.model)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)


def sam(
    model: keras.Model,
    *,
    rho: float = 0.05,
    perturbation: str | perturbations.Perturbation = "sam",
    micro_batch_size: int | None = None,
    replica_eps: str = "synchronized",
    variant: str | variants.Variant | None = None,
    clip_eps_gradient: bool = False,
    name: str | None = None,
) -> SAMModel:
    """Wraps a built Keras model into a `SAMModel` that shares its weights.

    The one-line change for existing code:

    ```python
    model = keras.Sequential([...])
    model = keras_sam.sam(model, rho=0.05)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y)
    ```

    Training the returned model trains `model`'s weights. A compiled `model`
    passes on its compile settings (its optimizer object with its state,
    loss, loss weights, metrics, `jit_compile`, `steps_per_execution`, ...),
    so wrapping after `compile` works too:

    ```python
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    model = keras_sam.sam(model)
    model.fit(x, y)
    ```

    The options are `SAMModel`'s; `name` defaults to ``"sam_" + model.name``.

    Returns:
        A `SAMWrapper` (for a keras-hub task, a subclass that keeps its
        preprocessor), compiled like `model` if `model` is compiled.

    Raises:
        ValueError: for a `model` that is not a built `keras.Model`, is
            already a `SAMModel`, or is compiled in a way this Keras cannot
            read back; and for a bad option (see `SAMModel`).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    if isinstance(model, SAMModel):
        raise ValueError("`model` is already a SAMModel; set its options instead.")
    if not model.built:
        raise ValueError(
            "`model` must be built before wrapping: call it on data or build it "
            "with `model.build(input_shape)`."
        )
    # A keras-hub task gets a wrapper that keeps its preprocessing pipeline.
    wrapper = _keras_hub.wrapper_class(model)(
        model,
        rho=rho,
        perturbation=perturbation,
        micro_batch_size=micro_batch_size,
        replica_eps=replica_eps,
        variant=variant,
        clip_eps_gradient=clip_eps_gradient,
        name=name or f"sam_{model.name}",
    )
    if model.compiled:
        _compile_like(wrapper, model)
    return wrapper


def _compile_like(wrapper: SAMModel, model: keras.Model) -> None:
    arguments = _compat.compile_arguments(model)
    if arguments is None:
        raise ValueError(
            "`model` is compiled, but its compile settings cannot be read in "
            f"Keras {keras.version()}. Wrap the model before compiling it: "
            "`model = keras_sam.sam(model)`, then `model.compile(...)`."
        )
    # The optimizer object itself (with its state; already wrapped in a
    # `LossScaleOptimizer` where `compile` decided so).
    arguments["optimizer"] = model.optimizer
    wrapper.compile(**arguments, auto_scale_loss=False)

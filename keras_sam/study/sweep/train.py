"""One run of a sweep: build, compile, fit, evaluate (and optionally measure
curvature) and return a JSON-ready record."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import keras
import numpy as np

import keras_sam
from keras_sam.optimizers import L2SGD
from keras_sam.study.sweep.distribute import replicas, resolve_strategy
from keras_sam.study.sweep.plan import SAM, RunSpec
from keras_sam.study.variant_options import variant_for_training
from keras_sam.study.workloads.presets import Preset
from keras_sam.study.workloads.registry import Data, Workload

STEP_DROPS = {"step": (0.5, 0.75), "step3": (0.25, 0.5, 0.75)}


def step_boundaries(preset: Preset, steps_per_epoch: int) -> list[int]:
    """The steps from which the step schedules' x0.1 drops apply:
    ``int(f * epochs * steps_per_epoch)`` for each drop fraction f (as the
    paper's code; the lr of update k, counted from 0, is ``lr * 0.1^(number
    of boundaries <= k)``)."""
    total = preset.epochs * steps_per_epoch
    return [int(f * total) for f in STEP_DROPS[preset.schedule]]


def learning_rate(preset: Preset, steps_per_epoch: int):
    """The preset's learning rate: a float or a Keras schedule."""
    total = max(1, preset.epochs * steps_per_epoch)
    if preset.schedule == "constant":
        return preset.lr
    if preset.schedule in STEP_DROPS:
        # Keras switches to values[i + 1] once step > boundaries[i].
        bounds = [b - 1 for b in step_boundaries(preset, steps_per_epoch)]
        values = [preset.lr * 0.1**i for i in range(len(bounds) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    warmup = min(preset.warmup_steps, total - 1)
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, warmup_target=preset.lr, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(preset.lr, total)


def make_optimizer(preset: Preset, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with the preset's momentum and schedule; weight decay
    ``"decoupled"`` (Keras SGD ``weight_decay``) or ``"coupled"``
    (`keras_sam.optimizers.L2SGD`, the paper's code)."""
    lr = learning_rate(preset, steps_per_epoch)
    if preset.weight_decay_form == "coupled":
        return L2SGD(lr, momentum=preset.momentum, l2=preset.weight_decay)
    return keras.optimizers.SGD(
        lr, momentum=preset.momentum, weight_decay=preset.weight_decay or None
    )


def _steps_per_epoch(data: Data, batch_size: int) -> int:
    return max(1, math.ceil(data.num_train / batch_size))


def _hessian_data(data: Data, n: int):
    if getattr(data, "sample", None) is not None:  # seeded, not augmented
        return data.sample(n)
    if not data.batched:
        x, y = data.train
        return x[:n], y[:n]
    xs, ys, count = [], [], 0
    for x, y in data.train:  # augmented training batches
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        count += len(xs[-1])
        if count >= n:
            break
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def prune(
    model: keras.Model,
    spec: RunSpec,
    workload: Workload,
    preset: Preset,
    data: Data,
    build_options: dict,
) -> float:
    """Prunes ``model`` at init to the kernel-weight count of the dense
    model of the budget size (``spec.variant``); returns the sparsity."""
    from keras_sam import sparsity

    method, budget, rescale = spec.pruning
    reference = workload.build(budget, **build_options)
    budget_count = sum(
        math.prod(t.variable.shape) for t in sparsity.prunable_weights(reference)
    )
    del reference
    target = sparsity.sparsity_for_budget(int(budget_count), model)
    snip_batch = _hessian_data(data, preset.batch_size) if method == "snip" else None
    sparsity.prune_at_init(
        model,
        target,
        method,
        data=snip_batch,
        seed=spec.seed,
        loss=workload.loss(preset.loss),
        rescale=rescale,
    )
    return target


def curvature(
    model: keras.Model, workload: Workload, data: Data, n: int, loss: str = "default"
) -> dict:
    """Sharpness ``lambda_max(H)`` and non-uniformity ``s2`` on ``n`` training
    examples (batch norm in inference mode, data loss ``workload.loss(loss)``
    only).

    The examples are the same for every run of a preset: for the tfds
    workloads ``data.sample(n)``, a uniform random sample without
    replacement of the (first ``num_train``) training examples drawn with
    the preset's ``data_seed``, without augmentation; for the array
    workloads (synthetic, matrix factorization, whose examples are i.i.d.
    draws seeded by ``data_seed``) the first ``n``.
    """
    from keras_sam import hessian

    subset = _hessian_data(data, n)
    op = hessian.CurvatureOperator(model, subset, loss=workload.loss(loss))
    return {
        "sharpness": hessian.sharpness(op),
        "s2": hessian.non_uniformity(op, order=2),
        "hessian_examples": int(len(subset[0])),
    }


def _smoothness_tracker(preset: Preset, workload: Workload, data: Data):
    """`SmoothnessEstimates` on the first step of ~10 evenly spaced epochs,
    on the Hessian subset, with f* = 0 (the interpolation assumption)."""
    if not preset.smoothness:
        return None
    from keras_sam.callbacks import SmoothnessEstimates

    return SmoothnessEstimates(
        _hessian_data(data, preset.hessian_examples),
        every=max(1, preset.epochs // 10),
        num_examples=None,
        loss=workload.loss(preset.loss),
    )


def _nonzero(model: keras.Model, params: int) -> dict[str, Any]:
    from keras_sam import sparsity

    report = sparsity.sparsity_report(model)  # after training: still pruned
    return {
        "sparsity": report.sparsity,
        "nonzero_params": params - (report.size - report.nonzero),
    }


def _train_run(
    spec: RunSpec,
    workload: Workload,
    preset: Preset,
    data: Data,
    verbose: int = 0,
    scope: contextlib.ExitStack | None = None,
) -> dict[str, Any]:
    keras.utils.set_random_seed(spec.seed)
    build_options = dict(preset.model_options)
    if preset.image_size is not None:
        build_options["image_size"] = preset.image_size
    model = workload.build(spec.size, seed=spec.seed, **build_options)
    if spec.pruning is not None:
        prune(model, spec, workload, preset, data, build_options)
    trained = model
    if spec.rho is not None:
        variant = None
        if spec.method != SAM:
            total_steps = preset.epochs * _steps_per_epoch(data, preset.batch_size)
            variant = variant_for_training(spec.method, total_steps)
        trained = keras_sam.sam(
            model, rho=spec.rho, perturbation=preset.perturbation, variant=variant
        )
    trained.compile(
        make_optimizer(preset, _steps_per_epoch(data, preset.batch_size)),
        loss=workload.loss(preset.loss),
        metrics=workload.metrics(),
    )
    if scope is not None:  # built and compiled in the strategy's scope: leave it
        scope.close()  # (Keras keeps the model's strategy for fit / evaluate)
    tracker = _smoothness_tracker(preset, workload, data)
    fit_options = dict(
        epochs=preset.epochs, verbose=verbose, callbacks=[tracker] if tracker else []
    )
    if preset.eval_every_epoch:  # the test curve, and the best epoch's metric
        fit_options["validation_data"] = data.test
        if not data.batched:
            fit_options["validation_batch_size"] = 1024
    start = time.perf_counter()
    if data.batched:
        history = trained.fit(data.train, shuffle=False, **fit_options)
        scores = trained.evaluate(data.test, verbose=0, return_dict=True)
    else:
        history = trained.fit(
            *data.train, batch_size=preset.batch_size, shuffle=True, **fit_options
        )
        scores = trained.evaluate(
            *data.test, batch_size=1024, verbose=0, return_dict=True
        )
    seconds = time.perf_counter() - start
    metric = {"test_loss": scores["loss"]}
    if "accuracy" in scores:
        metric["test_accuracy"] = scores["accuracy"]
    record = {
        "params": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
        "metric": workload.metric,
        "value": float(metric[workload.metric]),
        "scores": {k: float(v) for k, v in metric.items()},
        "history": {
            k: [float(v) for v in vs]
            for k, vs in history.history.items()
            if k in ("loss", "perturbed_loss", "accuracy", "val_loss", "val_accuracy")
        },
        "train_seconds": seconds,
    }
    if preset.eval_every_epoch:
        curves = {
            "test_loss": ("val_loss", min),
            "test_accuracy": ("val_accuracy", max),
        }
        for name, (key, best) in curves.items():
            if history.history.get(key):
                record["scores"][f"best_epoch_{name}"] = float(
                    best(history.history[key])
                )
    if spec.rho is not None:
        record["gradient_passes"] = trained.gradient_passes
    if spec.pruning is not None:
        record.update(_nonzero(model, record["params"]))
    if tracker is not None:
        record["smoothness"] = tracker.records
    if preset.hessian:
        record["hessian"] = curvature(
            model, workload, data, preset.hessian_examples, preset.loss
        )
    if not all(math.isfinite(v) for v in metric.values()):
        record["note"] = "non-finite test metric (diverged?)"
    return record


def train_run(
    spec: RunSpec,
    workload: Workload,
    preset: Preset,
    data: Data,
    verbose: int = 0,
    strategy: Any = None,
) -> dict[str, Any]:
    """Trains one run and returns its record (``status`` "ok").

    ``strategy``: None / ``"none"``, ``"mirrored"`` or a
    `tf.distribute.Strategy` (see `keras_sam.study.sweep.distribute`); the model
    is built, wrapped and compiled in its scope, so `fit` and `evaluate`
    run on its replicas; the Hessian metrics run outside it (the primary
    copy of the weights). The record's ``replicas`` is the strategy's
    replica count (1 without one).
    """
    strategy = resolve_strategy(strategy)
    with contextlib.ExitStack() as scope:
        if strategy is not None:
            scope.enter_context(strategy.scope())
        record = _train_run(spec, workload, preset, data, verbose, scope)
    record["replicas"] = replicas(strategy)
    return record

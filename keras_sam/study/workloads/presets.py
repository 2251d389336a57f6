"""Presets: a sweep's settings, in two parts.

- `RunConfig`, what one run trains and measures (workload, epochs, batch
  size, lr, schedule, data, model options, loss, ...): hashed into
  `RunConfig.config_id`, which names the run in a results file, so runs with
  equal ids are reused;
- `SweepShape`, what only shapes the sweep around the runs (sizes, the rho
  grid, seeds, SAM variants, fixed-budget pruning, what is measured after
  each run, verbosity); each run records its own size, rho and seed.

A `Preset` is both, with a name. Each workload's file (``synthetic.py``,
``mnist1d.py``, ...) holds its presets: the paper's hyperparameters
(paper.md, Section 4) and small ``quick`` ones for CPU runs.

```python
from keras_sam.study.workloads import get_preset
preset = get_preset("synthetic", "quick")
preset = preset.replace(epochs=5, seeds=(0,))
preset.config_id()            # "0fb209598d": the runs' identity
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from keras_sam import _validation

SCHEDULES = ("constant", "step", "step3", "cosine")
WEIGHT_DECAY_FORMS = ("decoupled", "coupled")
LABEL_NOISE_WORKLOADS = (
    "synthetic-classification",
    "mnist",
    "cifar10",
    "imagenet",
    "mnist1d",
    "mnist1d-cnn",
    "digits",
    "digits-cnn",
)
PRUNING_METHODS = ("random", "snip")  # keras_sam.sparsity.METHODS
LOSSES = ("default", "squared")


#: Identity fields left out of the hash at these values: the ids of the runs
#: made before the field existed.
_OMITTED_AT = {
    "loss": "default",
    "model_options": {},
    "weight_decay_form": "decoupled",
    "label_noise": 0.0,
}
_NEVER = object()


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What one run of a sweep trains and measures: `config_id` hashes these
    fields and only these.

    A new field that changes what a run trains or measures goes here, with
    its default in `_OMITTED_AT` so that the runs made before it existed
    keep their ids; one that does not goes in `SweepShape`.

    ``schedule``: ``"constant"``, ``"step"`` (x0.1 at 50% and 75% of
    training), ``"step3"`` (x0.1 at 25%, 50% and 75%: the paper's MNIST)
    or ``"cosine"`` (after ``warmup_steps`` linear warm-up); a drop at
    fraction f applies from step ``int(f * total_steps)`` on.
    ``perturbation`` is the SAM rule (``"sam"``, ``"usam"``, ``"asam"``).
    ``weight_decay_form``: ``"decoupled"`` (Keras SGD ``weight_decay``) or
    ``"coupled"`` (`keras_sam.optimizers.L2SGD`: ``weight_decay * w`` added
    to the SAM gradient before momentum, the paper's code); neither enters
    eps. ``label_noise``: seeded symmetric noise on that fraction of the
    training labels (classification workloads). ``data_options`` go to the
    workload's loader (e.g. ``{"noise": 0.0}``), ``model_options`` to its
    model builder (e.g. ``{"init": "torch"}`` for the synthetic student).
    ``loss``: ``"default"`` (the workload's loss) or ``"squared"`` (for the
    classifiers, the mean over classes of the squared difference between
    logits and one-hot labels, as Keras ``"mse"`` / PyTorch ``MSELoss``;
    for the regressions the same as the default); used for training and
    for the Hessian metrics.
    """

    workload: str = field(kw_only=False)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.0
    schedule: str = "step"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    weight_decay_form: str = "decoupled"
    label_noise: float = 0.0
    num_train: int | None = None
    num_test: int | None = None
    data_seed: int = 0
    image_size: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    perturbation: str = "sam"
    loss: str = "default"

    def __post_init__(self):
        check = _validation
        check.one_of(self.schedule, "schedule", SCHEDULES)
        for name in ("epochs", "batch_size"):
            check.positive_int(getattr(self, name), name)
        check.one_of(self.perturbation, "perturbation", ("sam", "usam", "asam"))
        check.one_of(self.loss, "loss", LOSSES)
        check.positive_float(self.lr, "lr")
        for name in ("momentum", "weight_decay"):
            check.non_negative_float(getattr(self, name), name)
        check.one_of(self.weight_decay_form, "weight_decay_form", WEIGHT_DECAY_FORMS)
        check.fraction(self.label_noise, "label_noise")
        if self.label_noise and self.workload not in LABEL_NOISE_WORKLOADS:
            raise ValueError(
                f"`label_noise` needs a classification workload "
                f"{list(LABEL_NOISE_WORKLOADS)}, got workload={self.workload!r}."
            )

    def training_config(self) -> dict[str, Any]:
        """The fields that define a run (`RUN_IDENTITY`), as `config_id`
        hashes them."""
        config = dataclasses.asdict(self)
        return {
            name: config[name]
            for name in RUN_IDENTITY
            if _OMITTED_AT.get(name, _NEVER) != config[name]
        }

    def config_id(self) -> str:
        """Short hash of `training_config`: runs with equal ids are reused."""
        text = json.dumps(self.training_config(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True, kw_only=True)
class SweepShape:
    """What shapes a sweep around its runs, outside `config_id`: the grid
    (each run records its size, rho and seed), the SAM variants (each run's
    method names its variant), fixed-budget pruning (each run records its
    pruning), what is measured after each run, and verbosity.

    ``eval_every_epoch``: evaluate the test set after every epoch; the
    record gets the test curve and ``best_epoch_<metric>`` (the authors'
    code reports its best epoch's test accuracy).
    ``hessian_examples``: the examples of the Hessian metrics, a seeded
    random sample of the training set (see
    `keras_sam.study.sweep.train.curvature`).
    ``sam_variants``: registered `keras_sam.variants` names, each run at
    every rho beside plain SAM.
    """

    sizes: tuple[float, ...]
    rhos: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    hessian: bool = False
    hessian_examples: int = 256
    keras_verbose: int = 2
    smoothness: bool = False
    eval_every_epoch: bool = False
    sparse_budget: float | None = None
    sparse_methods: tuple[str, ...] = PRUNING_METHODS
    sparse_rescale: bool = False
    sam_variants: tuple[str, ...] = ()

    def __post_init__(self):
        check = _validation
        check.positive_int(self.hessian_examples, "hessian_examples")
        check.non_empty_tuple(self.sizes, "sizes", check.positive_float)
        check.non_empty_tuple(self.seeds, "seeds")
        for rho in self.rhos:  # may be empty: a baseline-only sweep
            check.non_negative_float(rho, "rhos")
        self._validate_sparse()
        if self.sam_variants:
            from keras_sam import variants

            for name in self.sam_variants:
                check.one_of(name, "sam_variants", [n for n in variants.names()])

    def _validate_sparse(self) -> None:
        methods = self.sparse_methods
        if (
            isinstance(methods, str)
            or not methods
            or any(m not in PRUNING_METHODS for m in methods)
        ):
            raise ValueError(
                f"`sparse_methods` must be a non-empty tuple of {list(PRUNING_METHODS)}"
                f", got sparse_methods={methods!r}."
            )
        _validation.boolean(self.sparse_rescale, "sparse_rescale")
        budget = self.sparse_budget
        if budget is None:
            return
        _validation.positive_float(budget, "sparse_budget")
        if any(s < budget for s in self.sizes):
            raise ValueError(
                "`sizes` must all be >= `sparse_budget` (wider models are pruned "
                f"down to its weight count), got sizes={self.sizes!r} and "
                f"sparse_budget={budget!r}."
            )
        if not any(s > budget for s in self.sizes):
            raise ValueError(
                f"`sparse_budget`={budget!r} needs at least one size larger than "
                f"it to prune, got sizes={self.sizes!r}."
            )


@dataclass(frozen=True)
class Preset(RunConfig, SweepShape):
    """A named sweep: a `RunConfig` (what each run trains, hashed into
    `config_id`) and a `SweepShape` (sizes, rho grid, seeds and what else
    only shapes the sweep), in one flat frozen dataclass.

    ```python
    Preset("synthetic", "mine", sizes=(100, 1000), rhos=(0.1,), epochs=20)
    ```
    """

    name: str

    def __post_init__(self):
        RunConfig.__post_init__(self)
        SweepShape.__post_init__(self)

    def replace(self, **changes: Any) -> Preset:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def run_config(self) -> RunConfig:
        """The part that identifies the runs (`config_id` hashes it)."""
        return RunConfig(**{name: getattr(self, name) for name in RUN_IDENTITY})

    def sweep_shape(self) -> SweepShape:
        """The part that only shapes the sweep."""
        return SweepShape(
            **{name: getattr(self, name) for name in NOT_RUN_IDENTITY[1:]}
        )


#: The fields that define a run: `RunConfig`'s, hashed by `config_id`.
RUN_IDENTITY = tuple(f.name for f in dataclasses.fields(RunConfig))
#: The name, and the fields that only shape the sweep: `SweepShape`'s.
NOT_RUN_IDENTITY = ("name",) + tuple(f.name for f in dataclasses.fields(SweepShape))

# Settings several workloads' presets share.
# The authors' training code (LOG-postech/SAM-overparam; docs/reproduction.md):
# Flax's default LeCun-normal init, coupled L2 weight decay, momentum 0.9.
AUTHORS_TRAINING = dict(momentum=0.9, weight_decay_form="coupled")
LECUN_INIT = {"init": "lecun"}
MNIST_PROTOCOL = dict(
    AUTHORS_TRAINING, schedule="step3", weight_decay=1e-4, model_options=LECUN_INIT
)
# MNIST-1D and the digits (offline real data) under the paper's MNIST
# protocol: momentum 0.9, lr 0.1 x0.1 at 25/50/75%, coupled wd 1e-4, LeCun
# init, 100 epochs, batch 128; the test curve is recorded (best epoch and
# final). At 100 epochs the MNIST-1D MLP interpolates its 4,000 clean
# training labels from width ~64 (7.4k parameters); width 1024 is 148x that.
REAL_DATA = dict(MNIST_PROTOCOL, epochs=100, eval_every_epoch=True, keras_verbose=0)
REAL_DATA_QUICK = dict(REAL_DATA, seeds=(0,), rhos=(0.1,), epochs=20)


def signal_presets(name: str, paper_sizes, quick_sizes) -> list[Preset]:
    """The ``paper`` and ``quick`` presets of an offline signal workload."""
    return [
        Preset(name, "paper", sizes=paper_sizes, rhos=(0.05, 0.1, 0.2), **REAL_DATA),
        Preset(name, "quick", sizes=quick_sizes, **REAL_DATA_QUICK),
    ]


def get_preset(workload: str, name: str = "paper") -> Preset:
    """The preset ``name`` (``"paper"``, ``"quick"``, ...) of ``workload``."""
    from keras_sam.study.workloads.registry import PRESETS

    names = sorted({n for w, n in PRESETS if w == workload})
    if not names:
        workloads = sorted({w for w, _ in PRESETS})
        raise ValueError(
            f"`workload` must be one of {workloads}, got workload={workload!r}."
        )
    if (workload, name) not in PRESETS:
        raise ValueError(
            f"`preset` for {workload!r} must be one of {names}, got preset={name!r}."
        )
    return PRESETS[(workload, name)]


def __getattr__(name: str):
    # `PRESETS` is collected from the workloads' files (`registry.PRESETS`),
    # which import this module.
    if name == "PRESETS":
        from keras_sam.study.workloads import registry

        return registry.PRESETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

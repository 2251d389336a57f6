"""Presets: the paper's hyperparameters per workload (paper.md, Section 4)
plus small ``quick`` presets for CPU runs.

```python
from keras_sam.study.workloads import get_preset
preset = get_preset("synthetic", "quick")
preset = preset.replace(epochs=5, seeds=(0,))
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


#: The `Preset` fields that define a run: `config_id` hashes these and only
#: these, so a new field never changes the ids of finished sweeps (whose runs
#: are then reused). A new field that changes what a run trains or measures
#: must be added here (with its default in `_OMITTED_AT`, so that the runs
#: made before it existed keep their ids); one that does not goes in
#: `NOT_RUN_IDENTITY`.
RUN_IDENTITY = (
    "workload",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "schedule",
    "warmup_steps",
    "weight_decay",
    "num_train",
    "num_test",
    "data_seed",
    "image_size",
    "data_options",
    "perturbation",
    "loss",
    "model_options",
    "weight_decay_form",
    "label_noise",
)
#: The grid (each run records its size, rho and seed), display, and what
#: each run's variant records (pruning method and budget) or measures after.
NOT_RUN_IDENTITY = (
    "name",
    "sizes",
    "rhos",
    "seeds",
    "keras_verbose",
    "hessian",
    "hessian_examples",
    "smoothness",
    "sparse_budget",
    "sparse_methods",
    "sparse_rescale",
    "eval_every_epoch",
    "sam_variants",  # each run's method names its variant
)
#: Identity fields left out of the hash at these values: the ids of the runs
#: made before the field existed.
_OMITTED_AT = {
    "loss": "default",
    "model_options": {},
    "weight_decay_form": "decoupled",
    "label_noise": 0.0,
}
_NEVER = object()


@dataclass(frozen=True)
class Preset:
    """Sizes, rho grid, seeds and training hyperparameters of one sweep.

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
    ``eval_every_epoch``: evaluate the test set after every epoch; the
    record gets the test curve and ``best_epoch_<metric>`` (the authors'
    code reports its best epoch's test accuracy).
    ``hessian_examples``: the examples of the Hessian metrics, a seeded
    random sample of the training set (see `keras_sam.study.sweep.train.curvature`).
    ``sam_variants``: registered `keras_sam.variants` names, each run at
    every rho beside plain SAM.
    """

    workload: str
    name: str
    sizes: tuple[float, ...]
    rhos: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
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
        check.one_of(self.schedule, "schedule", SCHEDULES)
        for name in ("epochs", "batch_size", "hessian_examples"):
            check.positive_int(getattr(self, name), name)
        check.one_of(self.perturbation, "perturbation", ("sam", "usam", "asam"))
        check.one_of(self.loss, "loss", LOSSES)
        check.non_empty_tuple(self.sizes, "sizes", check.positive_float)
        check.non_empty_tuple(self.seeds, "seeds")
        for rho in self.rhos:  # may be empty: a baseline-only sweep
            check.non_negative_float(rho, "rhos")
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
        self._validate_sparse()
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

    def replace(self, **changes: Any) -> Preset:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

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


_SYNTHETIC_RHOS = (0.001, 0.01, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0)
# Explicit, so that results made with the earlier He-normal teacher (no
# `teacher_init` in their config) are never taken for these.
_TEACHER = {"teacher_init": "uniform"}
# The offline stand-ins for the MNIST stability and smoothness measurements
# fit a noiseless target: the He-normal teacher (output variance ~0.6) is fit
# to under 1% of its variance, the weak uniform one (~0.04) only to ~5%.
_NOISELESS = {"noise": 0.0, "teacher_init": "he"}

# The authors' training code (LOG-postech/SAM-overparam; docs/reproduction.md):
# Flax's default LeCun-normal init, coupled L2 weight decay, momentum 0.9.
_AUTHORS = dict(momentum=0.9, weight_decay_form="coupled")
_LECUN = {"init": "lecun"}
_MNIST = dict(_AUTHORS, schedule="step3", weight_decay=1e-4, model_options=_LECUN)
_CIFAR = dict(
    _AUTHORS,
    weight_decay=5e-4,
    model_options=_LECUN,
    data_options={"preprocessing": "authors"},
)
_IMAGENET = dict(
    _AUTHORS,
    schedule="cosine",
    weight_decay=1e-4,
    model_options={"init": "lecun", "zero_init_last_bn": True},
)
_CLASSIFICATION = dict(
    sizes=(16, 64, 256, 1024),
    rhos=(0.05, 0.1, 0.2),
    seeds=(0, 1),
    epochs=40,
    momentum=0.9,
    num_train=4_096,
    num_test=4_096,
    keras_verbose=0,
)

# MNIST-1D and the digits (offline real data) under the paper's MNIST
# protocol: momentum 0.9, lr 0.1 x0.1 at 25/50/75%, coupled wd 1e-4, LeCun
# init, 100 epochs, batch 128; the test curve is recorded (best epoch and
# final). At 100 epochs the MNIST-1D MLP interpolates its 4,000 clean
# training labels from width ~64 (7.4k parameters); width 1024 is 148x that.
_REAL = dict(_MNIST, epochs=100, eval_every_epoch=True, keras_verbose=0)
_REAL_QUICK = dict(_REAL, seeds=(0,), rhos=(0.1,), epochs=20)
_MNIST1D_WIDTHS = (16, 32, 64, 100, 256, 512, 1024)  # 100: the published MLP


def _signal_presets(name: str, paper_sizes, quick_sizes) -> list[Preset]:
    return [
        Preset(name, "paper", sizes=paper_sizes, rhos=(0.05, 0.1, 0.2), **_REAL),
        Preset(name, "quick", sizes=quick_sizes, **_REAL_QUICK),
    ]


#: Every preset by (workload name, preset name); `get_preset` looks them up.
PRESETS: dict[tuple[str, str], Preset] = {
    (p.workload, p.name): p
    for p in [
        # The student scales its inputs by 1 / sqrt(100) (see registry.py);
        # without that the paper's lr 0.1 diverges for widths >= 100.
        # The PyTorch-default student came closest to the paper's test
        # losses at this data size (docs/reproduction.md, the investigation).
        Preset(
            "synthetic",
            "paper",
            sizes=tuple(100 * k for k in range(1, 11)),
            rhos=_SYNTHETIC_RHOS,
            epochs=100,
            num_train=20_400,
            num_test=5_100,
            data_options=_TEACHER,
            model_options={"init": "torch"},
        ),
        # A tenth of the training set with the full 100-epoch schedule: the
        # overfitting regime where the paper's trend shows, in a few minutes.
        Preset(
            "synthetic",
            "quick",
            sizes=(100, 300, 1000),
            rhos=(0.2, 0.5, 1.0, 2.0),
            seeds=(0, 1),
            epochs=100,
            num_train=2_040,
            num_test=5_100,
            data_options=_TEACHER,
            model_options={"init": "torch"},
            keras_verbose=0,
        ),
        Preset(
            "synthetic",
            "stability",
            sizes=(256,),
            rhos=(0.01, 0.05, 0.1),
            seeds=(0,),
            epochs=200,
            batch_size=32,
            lr=0.05,
            schedule="constant",
            num_train=256,
            num_test=1024,
            data_options=_NOISELESS,
            hessian=True,
            keras_verbose=0,
        ),
        # Fixed budget (paper Section 5.2) on the quick preset's data: width
        # 100's weights, widths 200 / 400 / 1000 at sparsity 0.5 / 0.75 / 0.9.
        Preset(
            "synthetic",
            "sparse",
            sizes=(100, 200, 400, 1000),
            rhos=(0.05, 0.2, 0.5, 1.0),
            seeds=(0, 1),
            epochs=100,
            num_train=2_040,
            num_test=5_100,
            data_options=_TEACHER,
            sparse_budget=100,
            keras_verbose=0,
        ),
        # Smoothness and PL estimates along training (paper Fig. 21) on
        # noiseless data, where wide students interpolate (f* = 0).
        Preset(
            "synthetic",
            "smoothness",
            sizes=(100, 300, 1000),
            rhos=(0.05,),
            seeds=(0,),
            epochs=50,
            lr=0.1,
            schedule="constant",
            num_train=2_040,
            num_test=1_024,
            data_options=_NOISELESS,
            smoothness=True,
            keras_verbose=0,
        ),
        # The offline stand-in for the classification claims: a width sweep,
        # with label noise (--label-noise), and a fixed budget.
        Preset("synthetic-classification", "quick", **_CLASSIFICATION),
        Preset(
            "synthetic-classification",
            "noise",
            **dict(_CLASSIFICATION, sizes=(16, 256, 1024), label_noise=0.4),
        ),
        Preset(
            "synthetic-classification",
            "sparse",
            **dict(_CLASSIFICATION, sizes=(64, 256, 1024), sparse_budget=64),
        ),
        *_signal_presets("mnist1d", _MNIST1D_WIDTHS, (32, 256)),
        # 15% label noise (the MNIST-1D double-descent setting); 40% with
        # --label-noise 0.4.
        Preset(
            "mnist1d",
            "noise",
            sizes=(16, 32, 64, 128, 256),
            rhos=(0.1, 0.2),
            label_noise=0.15,
            **_REAL,
        ),
        # Width 64's 7.3k kernel weights; widths 128 / 256 pruned at init to
        # it: sparsity 0.68 / 0.91 (512: 0.975, with --sizes).
        Preset(
            "mnist1d",
            "sparse",
            sizes=(64, 128, 256),
            rhos=(0.1, 0.2),
            sparse_budget=64,
            **_REAL,
        ),
        # 25 channels: the MNIST-1D benchmark's CNN.
        *_signal_presets("mnist1d-cnn", (4, 8, 16, 25, 64), (8, 25)),
        *_signal_presets("digits", (4, 8, 16, 64, 512), (8, 64)),
        Preset("digits-cnn", "quick", sizes=(8, 32), **_REAL_QUICK),
        Preset(
            "matrix-factorization",
            "paper",
            sizes=(4, 10),
            # At batch 1, unnormalized SAM with rho 0.05 collapses both ranks
            # to W2 W1 = 0 (loss 48.1) in the first epoch; 0.005, 0.01 converge.
            rhos=(0.005, 0.01),
            epochs=100,
            batch_size=1,
            lr=0.0005,
            schedule="constant",
            perturbation="usam",  # the rule Theorem H.3 analyses
            num_train=1000,
            num_test=1000,
        ),
        Preset(
            "matrix-factorization",
            "quick",
            sizes=(4, 10),
            rhos=(0.01, 0.05),
            seeds=(0,),
            epochs=30,
            batch_size=10,
            lr=0.001,
            schedule="constant",
            perturbation="usam",
            num_train=1000,
            num_test=1000,
            keras_verbose=0,
        ),
        Preset(
            "mnist",
            "paper",
            sizes=(0.25, 0.5, 1.0, 4.0, 10.0),
            rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
            epochs=100,
            **_MNIST,
        ),
        # ~61k non-zero weights; sparsity 0.52 / 0.77 / 0.96 as in the paper.
        Preset(
            "mnist",
            "sparse",
            sizes=(0.25, 0.5, 1.0, 4.0),
            rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
            epochs=100,
            sparse_budget=0.25,
            **_MNIST,
        ),
        Preset(
            "mnist",
            "quick",
            sizes=(0.25, 1.0),
            rhos=(0.05,),
            seeds=(0,),
            epochs=2,
            num_train=10_000,
            **_MNIST,
            keras_verbose=0,
        ),
        # Linear stability (paper Fig. 6a/b): the 5.37m MLP, squared loss,
        # constant lr 0.1, plain SGD, trained to ~0 loss; sharpness and s2
        # on 1000 random training examples. 200 epochs: twice the paper's
        # budget, as plain SGD on a mean-over-classes squared loss converges
        # slowly (check the training loss in convergence.png).
        Preset(
            "mnist",
            "stability",
            sizes=(10.0,),
            rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
            seeds=(0,),
            epochs=200,
            batch_size=128,
            lr=0.1,
            momentum=0.0,
            schedule="constant",
            weight_decay=0.0,
            model_options=_LECUN,
            loss="squared",
            hessian=True,
            hessian_examples=1000,
        ),
        Preset(
            "cifar10",
            "paper",
            sizes=tuple(2**k for k in range(2, 9)),
            rhos=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            epochs=200,
            **_CIFAR,
        ),
        # ~701k non-zero weights (16 filters); 24 / 32 / 64 filters at
        # sparsity ~0.56 / 0.75 / 0.94 as in the paper.
        Preset(
            "cifar10",
            "sparse",
            sizes=(16, 24, 32, 64),
            rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
            epochs=200,
            sparse_budget=16,
            **_CIFAR,
        ),
        Preset(
            "cifar10",
            "quick",
            sizes=(4, 8),
            rhos=(0.05,),
            seeds=(0,),
            epochs=2,
            num_train=5_000,
            **_CIFAR,
            num_test=2_000,
            keras_verbose=0,
        ),
        Preset(
            "imagenet",
            "paper",
            sizes=tuple(16 * k for k in range(1, 6)),
            rhos=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
            epochs=90,
            batch_size=512,
            warmup_steps=5000,
            **_IMAGENET,
        ),
        Preset(
            "imagenet",
            "quick",
            sizes=(16,),
            rhos=(0.05,),
            seeds=(0,),
            epochs=1,
            batch_size=64,
            warmup_steps=10,
            num_train=2_048,
            **_IMAGENET,
            num_test=1_024,
            image_size=64,
            keras_verbose=0,
        ),
    ]
}


def get_preset(workload: str, name: str = "paper") -> Preset:
    """The preset ``name`` (``"paper"``, ``"quick"``, ...) of ``workload``."""
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

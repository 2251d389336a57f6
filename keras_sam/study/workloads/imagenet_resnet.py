"""The workload ``imagenet``: ImageNet (tensorflow-datasets, manual download)
with ResNet-50 of base filters 16k, and its presets (the paper's Section 4)."""

from __future__ import annotations

from keras_sam.study.workloads.presets import AUTHORS_TRAINING, Preset
from keras_sam.study.workloads.workload import (
    MODEL_INITS,
    Workload,
    accuracy,
    as_int,
    classification_loss,
    one_hot_mse,
    tfds_load,
)

_filters = as_int("base_filters")


def build(base_filters, seed=None, image_size=224, **options):
    """`resnet.resnet50` on ``image_size`` square images; ``options``:
    ``init``, ``zero_init_last_bn``."""
    from keras_sam.study.workloads import resnet

    return resnet.resnet50(
        _filters(base_filters),
        input_shape=(image_size, image_size, 3),
        seed=seed,
        **options,
    )


def count_params(base_filters, **_) -> int:
    from keras_sam.study.workloads import resnet

    return resnet.resnet50_params(_filters(base_filters))


WORKLOAD = Workload(
    name="imagenet",
    description="ImageNet, ResNet-50 with base filters 16k (manual download)",
    size_name="base_filters",
    metric="test_accuracy",
    build_fn=build,
    count_fn=count_params,
    load_fn=tfds_load("imagenet", "imagenet"),
    loss_fn=classification_loss,
    metrics_fn=accuracy,
    squared_loss_fn=one_hot_mse,
    inits=MODEL_INITS,
)

_IMAGENET = dict(
    AUTHORS_TRAINING,
    schedule="cosine",
    weight_decay=1e-4,
    model_options={"init": "lecun", "zero_init_last_bn": True},
)

PRESETS = [
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

"""ResNet-18 (CIFAR) and ResNet-50 (ImageNet) with a base filter count.

Convolutions have no bias (batch norm follows each); counts are trainable
parameters (batch-norm moving statistics excluded), as in the paper's
Flax models. ResNet-18 with ``base_filters = 2^k`` (k = 2..8) has 0.045m ..
178.6m parameters; ResNet-50 with ``16 k`` (k = 1..5) has 2.0m .. 39.3m.
"""

from __future__ import annotations

import math

import keras

from keras_sam import _validation
from keras_sam.study.workloads.mlp import Initializers

_RESNET18_BLOCKS = (2, 2, 2, 2)
_RESNET50_BLOCKS = (3, 4, 6, 3)


def _check_filters(base_filters) -> int:
    return _validation.positive_int(base_filters, "base_filters")


def resnet18_params(base_filters: int, classes: int = 10, channels: int = 3) -> int:
    """Trainable parameter count of `resnet18_cifar` without building it."""
    w = _check_filters(base_filters)
    total = 9 * channels * w + 2 * w
    c_in = w
    for stage, blocks in enumerate(_RESNET18_BLOCKS):
        c = w * 2**stage
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            total += 9 * c_in * c + 9 * c * c + 4 * c
            if stride != 1 or c_in != c:
                total += c_in * c + 2 * c
            c_in = c
    return total + (c_in + 1) * classes


def resnet50_params(base_filters: int, classes: int = 1000, channels: int = 3) -> int:
    """Trainable parameter count of `resnet50` without building it."""
    w = _check_filters(base_filters)
    total = 49 * channels * w + 2 * w
    c_in = w
    for stage, blocks in enumerate(_RESNET50_BLOCKS):
        b_width = w * 2**stage
        c = 4 * b_width
        for b in range(blocks):
            total += c_in * b_width + 9 * b_width * b_width + b_width * c
            total += 2 * b_width + 2 * b_width + 2 * c
            if b == 0:
                total += c_in * c + 2 * c
            c_in = c
    return total + (c_in + 1) * classes


def _bn(x, name, zero_scale=False):
    return keras.layers.BatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        gamma_initializer="zeros" if zero_scale else "ones",
        name=name,
    )(x)


def _conv(x, filters, kernel, stride, name, init):
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=init.hidden(),
        name=name,
    )(x)


def _basic_block(x, filters, stride, name, init):
    shortcut = x
    y = _conv(x, filters, 3, stride, f"{name}_conv1", init)
    y = keras.layers.ReLU()(_bn(y, f"{name}_bn1"))
    y = _bn(_conv(y, filters, 3, 1, f"{name}_conv2", init), f"{name}_bn2")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_proj", init)
        shortcut = _bn(shortcut, f"{name}_proj_bn")
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def _bottleneck(x, width, stride, project, name, init, zero_last_bn=False):
    shortcut = x
    y = keras.layers.ReLU()(
        _bn(_conv(x, width, 1, 1, f"{name}_conv1", init), f"{name}_bn1")
    )
    y = _conv(y, width, 3, stride, f"{name}_conv2", init)  # stride here: v1.5
    y = keras.layers.ReLU()(_bn(y, f"{name}_bn2"))
    y = _conv(y, 4 * width, 1, 1, f"{name}_conv3", init)
    y = _bn(y, f"{name}_bn3", zero_scale=zero_last_bn)
    if project:
        shortcut = _conv(x, 4 * width, 1, stride, f"{name}_proj", init)
        shortcut = _bn(shortcut, f"{name}_proj_bn")
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def _head(x, classes, init):
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(classes, kernel_initializer=init.head())(x)


def resnet18_cifar(
    base_filters: int = 64,
    classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    seed: int | None = None,
    init: str = "he",
) -> keras.Model:
    """CIFAR ResNet-18 (3x3 stem, no max-pool; stages w, 2w, 4w, 8w).

    ``init``: ``"he"`` (He-normal convolutions, Glorot-uniform head) or
    ``"lecun"`` (LeCun-normal everywhere, Flax's default: the paper's code).

    ```python
    model = keras_sam.study.workloads.resnet18_cifar(base_filters=16)  # 0.70m
    ```
    """
    w = _check_filters(base_filters)
    init = Initializers(init, seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.ReLU()(_bn(_conv(inputs, w, 3, 1, "stem_conv", init), "stem_bn"))
    for stage, blocks in enumerate(_RESNET18_BLOCKS):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            x = _basic_block(x, w * 2**stage, stride, f"s{stage}b{b}", init)
    return keras.Model(inputs, _head(x, classes, init), name=f"resnet18_w{w}")


def resnet50(
    base_filters: int = 64,
    classes: int = 1000,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    seed: int | None = None,
    init: str = "he",
    zero_init_last_bn: bool = False,
) -> keras.Model:
    """ImageNet ResNet-50 (v1.5: stride in the 3x3 convolution).

    ``init`` as in `resnet18_cifar`; ``zero_init_last_bn``: each bottleneck's
    last batch norm starts with scale 0 (the block starts as the identity),
    as in the paper's code.

    ```python
    model = keras_sam.study.workloads.resnet50(base_filters=16)   # 2.0m parameters
    ```
    """
    w = _check_filters(base_filters)
    init = Initializers(init, seed)
    inputs = keras.Input(input_shape)
    x = _conv(inputs, w, 7, 2, "stem_conv", init)
    x = keras.layers.ReLU()(_bn(x, "stem_bn"))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, blocks in enumerate(_RESNET50_BLOCKS):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            x = _bottleneck(
                x,
                w * 2**stage,
                stride,
                b == 0,
                f"s{stage}b{b}",
                init,
                zero_init_last_bn,
            )
    return keras.Model(inputs, _head(x, classes, init), name=f"resnet50_w{w}")


def trainable_params(model: keras.Model) -> int:
    """Number of trainable parameters (what the paper counts)."""
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))

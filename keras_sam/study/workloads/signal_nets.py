"""Width-scaled classifiers for short signals (MNIST-1D's length-40
signals, the digits' 64 pixels): a two-hidden-layer ReLU MLP and a
three-layer 1-D CNN, both with logits out.

- `signal_mlp(width)`: ``Dense(width) -> relu -> Dense(width) -> relu ->
  Dense(classes)``, the MLP of the MNIST-1D double-descent notebook (width
  100 is the MNIST-1D benchmark's MLP size, there with a residual second
  layer).
- `signal_cnn(channels)`: the MNIST-1D benchmark's ConvBase with
  ``channels`` filters per layer (25 there): ``Conv1D(c, 5, stride 2,
  padding 1) -> relu -> Conv1D(c, 3, stride 2, padding 1) -> relu ->`` the
  same again ``-> flatten -> Dense(classes)``.

```python
model = signal_mlp(100, seed=0)      # 15,210 parameters
signal_cnn_params(25)                # 5,210
```
"""

from __future__ import annotations

import keras

from keras_sam.study.workloads.mlp import Initializers

CONV_LAYERS = ((5, 2), (3, 2), (3, 2))  # (kernel, stride), padding 1 each


def _width(width, name: str) -> int:
    if isinstance(width, bool) or float(width) != int(width) or int(width) < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {name}={width!r}.")
    return int(width)


def signal_mlp_params(width: int, input_dim: int = 40, classes: int = 10) -> int:
    """The parameter count of `signal_mlp` of this width (without building it)."""
    w = _width(width, "width")
    return (input_dim + 1) * w + (w + 1) * w + (w + 1) * classes


def signal_mlp(
    width: int,
    input_dim: int = 40,
    classes: int = 10,
    seed: int | None = None,
    init: str = "he",
) -> keras.Model:
    """Two hidden ReLU layers of ``width`` units (``init`` as
    `lenet_300_100`'s: ``"he"`` or ``"lecun"``; zero biases)."""
    w = _width(width, "width")
    inits = Initializers(init, seed)
    inputs = keras.Input((input_dim,))
    h = keras.layers.Dense(w, activation="relu", kernel_initializer=inits.hidden())(
        inputs
    )
    h = keras.layers.Dense(w, activation="relu", kernel_initializer=inits.hidden())(h)
    outputs = keras.layers.Dense(classes, kernel_initializer=inits.head())(h)
    return keras.Model(inputs, outputs, name=f"signal_mlp_{w}")


def conv_lengths(length: int) -> list[int]:
    """The signal length after each convolution (padding 1 both sides)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 3:
        raise ValueError(
            f"`length` must be an integer >= 3 (the first convolution's kernel "
            f"is 5 with padding 1), got length={length!r}."
        )
    lengths = []
    for kernel, stride in CONV_LAYERS:
        length = (length + 2 - kernel) // stride + 1
        lengths.append(length)
    return lengths


def signal_cnn_params(channels: int, length: int = 40, classes: int = 10) -> int:
    """The parameter count of `signal_cnn` with `channels` (without building it)."""
    c = _width(channels, "channels")
    count, fan_in = 0, 1
    for kernel, _ in CONV_LAYERS:
        count += (kernel * fan_in + 1) * c
        fan_in = c
    return count + (conv_lengths(length)[-1] * c + 1) * classes


def signal_cnn(
    channels: int,
    length: int = 40,
    classes: int = 10,
    seed: int | None = None,
    init: str = "he",
) -> keras.Model:
    """Three strided ReLU convolutions of ``channels`` filters on a
    ``(length,)`` input, then a linear head on the flattened features."""
    c = _width(channels, "channels")
    conv_lengths(length)  # checks the length
    inits = Initializers(init, seed)
    inputs = keras.Input((length,))
    h = keras.layers.Reshape((length, 1))(inputs)
    for kernel, stride in CONV_LAYERS:
        h = keras.layers.ZeroPadding1D(1)(h)
        h = keras.layers.Conv1D(
            c,
            kernel,
            strides=stride,
            activation="relu",
            kernel_initializer=inits.hidden(),
        )(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(classes, kernel_initializer=inits.head())(h)
    return keras.Model(inputs, outputs, name=f"signal_cnn_{c}")

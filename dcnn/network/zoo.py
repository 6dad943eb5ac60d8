"""The model zoo: LeNet-5, AlexNet, VGG-11/13/16/19 (with and without batch norm), and the DAG models of
:mod:`dcnn.network.zoo_dag` (ResNet-18/34/50, MobileNetV2, MobileNetV3-Small, SqueezeNet 1.1, GoogLeNet).

AlexNet and VGG follow torchvision's layer layout exactly (the same ``state_dict`` names, shapes and order),
including the adaptive average pool before the classifier, so they accept any input large enough and a user
can run torchvision's trained weights after exporting them with ``{k: v.numpy() for k, v in sd.items()}``.
"""

from __future__ import annotations

from collections.abc import Callable

from dcnn.errors import InputError
from dcnn.network.graph import Network, Preprocessing
from dcnn.network.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    Tanh,
)
from dcnn.network.zoo_dag import googlenet, mobilenet_v2, mobilenet_v3_small, resnet, squeezenet1_1

__all__ = ["MODELS", "alexnet", "get_model", "lenet5", "model_names", "vgg"]

MNIST = Preprocessing(mean=(0.1307,), std=(0.3081,), grayscale=True)

#: torchvision's VGG configurations: numbers are conv output channels, "M" a 2x2 max pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _named(prefix: str, layers: list[Layer]) -> list[tuple[str, Layer]]:
    return [(f"{prefix}.{i}", layer) for i, layer in enumerate(layers)]


def lenet5() -> Network:
    """Classic LeNet-5 (LeCun et al., 1998) on 1x32x32 input: tanh, average-pool subsampling.

    C5 is a 5x5 convolution to 120 maps and there is no adaptive pooling: the network takes 32x32 input only.
    61,706 parameters.
    """
    features = [Conv2d(1, 6, 5), Tanh(), AvgPool2d(2), Conv2d(6, 16, 5), Tanh(), AvgPool2d(2),
                Conv2d(16, 120, 5), Tanh()]
    classifier = [Linear(120, 84), Tanh(), Linear(84, 10)]
    layers = _named("features", features) + [("flatten", Flatten())] + _named("classifier", classifier)
    return Network("lenet5", tuple(layers), (1, 32, 32), MNIST, "LeNet-5, 1x32x32 grayscale, 10 classes",
                   fixed_input_size=True)


def alexnet(num_classes: int = 1000) -> Network:
    """AlexNet in torchvision's layout (61,100,840 parameters for 1000 classes)."""
    features = [
        Conv2d(3, 64, 11, stride=4, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(192, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(),
        Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2),
    ]
    classifier = [Dropout(), Linear(256 * 6 * 6, 4096), ReLU(), Dropout(), Linear(4096, 4096), ReLU(),
                  Linear(4096, num_classes)]
    layers = (_named("features", features) + [("avgpool", AdaptiveAvgPool2d(6)), ("flatten", Flatten())]
              + _named("classifier", classifier))
    return Network("alexnet", tuple(layers), (3, 224, 224),
                   description="AlexNet (torchvision layout), ImageNet preprocessing")


def vgg(depth: int, batch_norm: bool = False, num_classes: int = 1000) -> Network:
    """VGG-11/13/16/19 in torchvision's layout, optionally with batch norm after every convolution."""
    config = VGG_CONFIGS[f"vgg{depth}"]
    features: list[Layer] = []
    channels = 3
    for item in config:
        if item == "M":
            features.append(MaxPool2d(2, 2))
            continue
        features.append(Conv2d(channels, int(item), 3, padding=1))
        if batch_norm:
            features.append(BatchNorm2d(int(item)))
        features.append(ReLU())
        channels = int(item)
    classifier = [Linear(512 * 7 * 7, 4096), ReLU(), Dropout(), Linear(4096, 4096), ReLU(), Dropout(),
                  Linear(4096, num_classes)]
    layers = (_named("features", features) + [("avgpool", AdaptiveAvgPool2d(7)), ("flatten", Flatten())]
              + _named("classifier", classifier))
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    return Network(name, tuple(layers), (3, 224, 224),
                   description=f"VGG-{depth}{' with batch norm' if batch_norm else ''} (torchvision layout)")


MODELS: dict[str, Callable[[], Network]] = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    **{f"vgg{d}": (lambda d=d: vgg(d)) for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": (lambda d=d: vgg(d, batch_norm=True)) for d in (11, 13, 16, 19)},
    **{f"resnet{d}": (lambda d=d: resnet(d)) for d in (18, 34, 50)},
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "squeezenet1_1": squeezenet1_1,
    "googlenet": googlenet,
}


def model_names() -> list[str]:
    """Names accepted by :func:`get_model` and ``--model``."""
    return list(MODELS)


def get_model(name: str) -> Network:
    """Build a zoo model by name.

    Parameters
    ----------
    name : str
        One of :func:`model_names` (case does not matter), e.g. ``"vgg16"``.

    Returns
    -------
    Network
        The model's layer specs: its per-image ``input_shape`` ``(C, H, W)`` (pixels), output shape, and per-layer
        parameter counts, bytes (float32) and multiply-accumulates; no weights (see :func:`load_weights`).

    Raises
    ------
    InputError
        For an unknown name, listing the known ones.

    Examples
    --------
    >>> get_model("AlexNet").input_shape
    (3, 224, 224)
    """
    try:
        return MODELS[name.lower()]()
    except KeyError:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None

"""The zoo's DAG models in torchvision's layouts and ``state_dict`` names: ResNet, MobileNet, SqueezeNet, GoogLeNet.

Node names are the prefixes of torchvision's ``state_dict`` keys (``layer1.0.conv1``, ``features.3.conv.1.0``),
so torchvision's trained weights load unchanged. Nodes without tensors that torchvision does not name (a
block's residual add, a ReLU module it calls twice, the flatten before the classifier) get names of their own
(``layer1.0.add``, ``layer1.0.relu2``, ``flatten``); they change no ``state_dict`` key.

Architectures, with the published parameter counts (ImageNet, 1000 classes):

- ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks, stride on the 3x3 convolution as torchvision's
  "ResNet V1.5"): He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. 11,689,512 /
  21,797,672 / 25,557,032 parameters.
- MobileNetV2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
  3,504,872 parameters.
- MobileNetV3-Small: Howard et al., "Searching for MobileNetV3", ICCV 2019, with squeeze-and-excitation gates
  (Hu et al., CVPR 2018) in torchvision's ``SqueezeExcitation`` layout. 2,542,856 parameters.
- SqueezeNet 1.1: Iandola et al., "SqueezeNet", arXiv:1602.07360, and the v1.1 note of its repository.
  1,235,496 parameters.
- GoogLeNet (Inception v1) at inference, without the auxiliary classifiers: Szegedy et al., "Going Deeper with
  Convolutions", CVPR 2015, with torchvision's batch-normalised convolutions (and its 3x3 kernel in the "5x5"
  branch). 6,624,904 parameters. torchvision's trained GoogLeNet rescales its input to ``(x - 0.5) / 0.5``
  (``transform_input``); here that is the network's preprocessing.
"""

from __future__ import annotations

from dcnn.network.graph import GraphBuilder, Network, Preprocessing
from dcnn.network.layers import (
    AdaptiveAvgPool2d,
    Add,
    BatchNorm2d,
    Concat,
    Conv2d,
    Dropout,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Layer,
    Linear,
    MaxPool2d,
    Mul,
    ReLU,
    ReLU6,
)

__all__ = ["googlenet", "mobilenet_v2", "mobilenet_v3_small", "resnet", "squeezenet1_1"]

#: torchvision's ResNet depths: blocks per stage and whether the blocks are bottlenecks.
RESNET_CONFIGS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
}


def _classifier(graph: GraphBuilder, features: int, num_classes: int, name: str = "fc",
                dropout: float | None = None) -> None:
    """Global average pool, flatten, optional dropout and the fully connected layer."""
    graph.add("avgpool", AdaptiveAvgPool2d(1))
    graph.add("flatten", Flatten())
    if dropout is not None:
        graph.add("dropout", Dropout(dropout))
    graph.add(name, Linear(features, num_classes))


def _conv_bn(graph: GraphBuilder, conv: str, norm: str, source: str, in_channels: int, out_channels: int,
             kernel: int, stride: int = 1, padding: int = 0, groups: int = 1, eps: float = 1e-5) -> str:
    graph.add(conv, Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False), source)
    return graph.add(norm, BatchNorm2d(out_channels, eps=eps))


def _residual_block(graph: GraphBuilder, prefix: str, source: str, in_channels: int, width: int, stride: int,
                    bottleneck: bool) -> tuple[str, int]:
    """One basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block; returns its output and channel count."""
    out_channels = width * 4 if bottleneck else width
    if bottleneck:
        x = _conv_bn(graph, f"{prefix}.conv1", f"{prefix}.bn1", source, in_channels, width, 1)
        graph.add(f"{prefix}.relu1", ReLU())
        x = _conv_bn(graph, f"{prefix}.conv2", f"{prefix}.bn2", graph.last, width, width, 3, stride, 1)
        graph.add(f"{prefix}.relu2", ReLU())
        x = _conv_bn(graph, f"{prefix}.conv3", f"{prefix}.bn3", graph.last, width, out_channels, 1)
    else:
        x = _conv_bn(graph, f"{prefix}.conv1", f"{prefix}.bn1", source, in_channels, width, 3, stride, 1)
        graph.add(f"{prefix}.relu1", ReLU())
        x = _conv_bn(graph, f"{prefix}.conv2", f"{prefix}.bn2", graph.last, width, width, 3, 1, 1)
    skip = source
    if stride != 1 or in_channels != out_channels:
        skip = _conv_bn(graph, f"{prefix}.downsample.0", f"{prefix}.downsample.1", source, in_channels,
                        out_channels, 1, stride)
    graph.add(f"{prefix}.add", Add(), x, skip)
    return graph.add(f"{prefix}.relu", ReLU()), out_channels


def resnet(depth: int, num_classes: int = 1000) -> Network:
    """ResNet-18, -34 or -50 in torchvision's layout."""
    blocks, bottleneck = RESNET_CONFIGS[depth]
    graph = GraphBuilder()
    _conv_bn(graph, "conv1", "bn1", "input", 3, 64, 7, 2, 3)
    graph.add("relu", ReLU())
    x = graph.add("maxpool", MaxPool2d(3, 2, 1))
    channels = 64
    for stage, count in enumerate(blocks):
        width = 64 << stage
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            x, channels = _residual_block(graph, f"layer{stage + 1}.{block}", x, channels, width, stride, bottleneck)
    _classifier(graph, channels, num_classes)
    return graph.build(f"resnet{depth}", (3, 224, 224),
                       description=f"ResNet-{depth} (torchvision layout), ImageNet preprocessing")


def _make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: to a multiple of ``divisor``, never more than 10 % down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(graph: GraphBuilder, prefix: str, source: str, in_channels: int, out_channels: int,
                   kernel: int, stride: int = 1, groups: int = 1) -> str:
    """torchvision's ``Conv2dNormActivation``: ``prefix.0`` conv, ``prefix.1`` batch norm, ``prefix.2`` ReLU6."""
    _conv_bn(graph, f"{prefix}.0", f"{prefix}.1", source, in_channels, out_channels, kernel, stride,
             (kernel - 1) // 2, groups)
    return graph.add(f"{prefix}.2", ReLU6())


def mobilenet_v2(num_classes: int = 1000) -> Network:
    """MobileNetV2 (width 1.0) in torchvision's layout: inverted residual blocks with linear bottlenecks."""
    # (expansion t, output channels c, repeats n, first stride s), Table 2 of Sandler et al.
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    graph = GraphBuilder()
    channels = _make_divisible(32)
    x = _conv_bn_relu6(graph, "features.0", "input", 3, channels, 3, 2)
    index = 1
    for expansion, width, repeats, first_stride in settings:
        out_channels = _make_divisible(width)
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            prefix = f"features.{index}.conv"
            hidden = channels * expansion
            y, part = x, 0
            if expansion != 1:
                y = _conv_bn_relu6(graph, f"{prefix}.0", x, channels, hidden, 1)
                part = 1
            y = _conv_bn_relu6(graph, f"{prefix}.{part}", y, hidden, hidden, 3, stride, groups=hidden)
            y = _conv_bn(graph, f"{prefix}.{part + 1}", f"{prefix}.{part + 2}", y, hidden, out_channels, 1)
            if stride == 1 and channels == out_channels:
                x = graph.add(f"features.{index}.add", Add(), x, y)
            else:
                x = y
            channels = out_channels
            index += 1
    last_channels = _make_divisible(1280)
    _conv_bn_relu6(graph, f"features.{index}", x, channels, last_channels, 1)
    graph.add("avgpool", AdaptiveAvgPool2d(1))
    graph.add("flatten", Flatten())
    graph.add("classifier.0", Dropout(0.2))
    graph.add("classifier.1", Linear(last_channels, num_classes))
    return graph.build("mobilenet_v2", (3, 224, 224),
                       description="MobileNetV2 (torchvision layout), ImageNet preprocessing")


def _conv_bn_act(graph: GraphBuilder, prefix: str, source: str, in_channels: int, out_channels: int, kernel: int,
                 stride: int = 1, groups: int = 1, activation: Layer | None = None) -> str:
    """MobileNetV3's ``Conv2dNormActivation``: ``prefix.0`` conv, ``prefix.1`` batch norm (eps 0.001), and
    ``prefix.2`` the activation, if any."""
    x = _conv_bn(graph, f"{prefix}.0", f"{prefix}.1", source, in_channels, out_channels, kernel, stride,
                 (kernel - 1) // 2, groups, eps=1e-3)
    return graph.add(f"{prefix}.2", activation) if activation is not None else x


def _squeeze_excitation(graph: GraphBuilder, prefix: str, source: str, channels: int, squeeze: int) -> str:
    """Squeeze-and-excitation (Hu et al., CVPR 2018) as torchvision's ``SqueezeExcitation`` with a hard-sigmoid
    gate: global average pool, 1x1 ``fc1``, ReLU, 1x1 ``fc2``, then the map times the per-channel gate."""
    graph.add(f"{prefix}.avgpool", AdaptiveAvgPool2d(1), source)
    graph.add(f"{prefix}.fc1", Conv2d(channels, squeeze, 1))
    graph.add(f"{prefix}.activation", ReLU())
    graph.add(f"{prefix}.fc2", Conv2d(squeeze, channels, 1))
    gate = graph.add(f"{prefix}.scale_activation", Hardsigmoid())
    return graph.add(f"{prefix}.scale", Mul(), source, gate)


def mobilenet_v3_small(num_classes: int = 1000) -> Network:
    """MobileNetV3-Small (width 1.0) in torchvision's layout: inverted residuals, squeeze-and-excitation gates
    (Howard et al., "Searching for MobileNetV3", ICCV 2019, Table 2)."""
    # (kernel, expanded channels, output channels, squeeze-and-excitation, hard-swish, stride)
    settings = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
                (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
                (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
                (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]
    graph = GraphBuilder()
    x = _conv_bn_act(graph, "features.0", "input", 3, 16, 3, 2, activation=Hardswish())
    channels = 16
    for index, (kernel, expanded, out_channels, se, hard, stride) in enumerate(settings, start=1):
        activation = Hardswish if hard else ReLU
        prefix, part, y = f"features.{index}.block", 0, x
        if expanded != channels:
            y = _conv_bn_act(graph, f"{prefix}.0", y, channels, expanded, 1, activation=activation())
            part = 1
        y = _conv_bn_act(graph, f"{prefix}.{part}", y, expanded, expanded, kernel, stride, expanded, activation())
        if se:
            part += 1
            y = _squeeze_excitation(graph, f"{prefix}.{part}", y, expanded, _make_divisible(expanded // 4))
        y = _conv_bn_act(graph, f"{prefix}.{part + 1}", y, expanded, out_channels, 1)
        x = graph.add(f"features.{index}.add", Add(), x, y) if stride == 1 and channels == out_channels else y
        channels = out_channels
    _conv_bn_act(graph, f"features.{len(settings) + 1}", x, channels, 6 * channels, 1, activation=Hardswish())
    graph.add("avgpool", AdaptiveAvgPool2d(1))
    graph.add("flatten", Flatten())
    graph.add("classifier.0", Linear(6 * channels, 1024))
    graph.add("classifier.1", Hardswish())
    graph.add("classifier.2", Dropout(0.2))
    graph.add("classifier.3", Linear(1024, num_classes))
    return graph.build("mobilenet_v3_small", (3, 224, 224),
                       description="MobileNetV3-Small (torchvision layout, squeeze-and-excitation), ImageNet "
                                   "preprocessing")


def _fire(graph: GraphBuilder, prefix: str, in_channels: int, squeeze: int, expand: int) -> int:
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""
    graph.add(f"{prefix}.squeeze", Conv2d(in_channels, squeeze, 1))
    squeezed = graph.add(f"{prefix}.squeeze_activation", ReLU())
    graph.add(f"{prefix}.expand1x1", Conv2d(squeeze, expand, 1), squeezed)
    left = graph.add(f"{prefix}.expand1x1_activation", ReLU())
    graph.add(f"{prefix}.expand3x3", Conv2d(squeeze, expand, 3, padding=1), squeezed)
    right = graph.add(f"{prefix}.expand3x3_activation", ReLU())
    graph.add(f"{prefix}.cat", Concat(), left, right)
    return 2 * expand


def squeezenet1_1(num_classes: int = 1000) -> Network:
    """SqueezeNet 1.1 in torchvision's layout (fire modules; a convolutional classifier)."""
    graph = GraphBuilder()
    graph.add("features.0", Conv2d(3, 64, 3, stride=2))
    graph.add("features.1", ReLU())
    channels = 64
    modules = [("M",), (16, 64), (16, 64), ("M",), (32, 128), (32, 128), ("M",), (48, 192), (48, 192),
               (64, 256), (64, 256)]
    for index, module in enumerate(modules, start=2):
        if module[0] == "M":
            graph.add(f"features.{index}", MaxPool2d(3, 2, ceil_mode=True))
        else:
            channels = _fire(graph, f"features.{index}", channels, *module)  # type: ignore[arg-type]
    graph.add("classifier.0", Dropout(0.5))
    graph.add("classifier.1", Conv2d(channels, num_classes, 1))
    graph.add("classifier.2", ReLU())
    graph.add("classifier.3", AdaptiveAvgPool2d(1))
    graph.add("flatten", Flatten())
    return graph.build("squeezenet1_1", (3, 224, 224),
                       description="SqueezeNet 1.1 (torchvision layout), ImageNet preprocessing")


def _basic_conv(graph: GraphBuilder, prefix: str, source: str, in_channels: int, out_channels: int, kernel: int,
                stride: int = 1, padding: int = 0) -> str:
    """torchvision's GoogLeNet ``BasicConv2d``: convolution without bias, batch norm (eps 0.001), ReLU."""
    _conv_bn(graph, f"{prefix}.conv", f"{prefix}.bn", source, in_channels, out_channels, kernel, stride, padding,
             eps=1e-3)
    return graph.add(f"{prefix}.relu", ReLU())


def _inception(graph: GraphBuilder, prefix: str, source: str, in_channels: int, ch1x1: int, ch3x3red: int,
               ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int) -> tuple[str, int]:
    """An Inception module: four branches concatenated along channels."""
    one = _basic_conv(graph, f"{prefix}.branch1", source, in_channels, ch1x1, 1)
    two = _basic_conv(graph, f"{prefix}.branch2.0", source, in_channels, ch3x3red, 1)
    two = _basic_conv(graph, f"{prefix}.branch2.1", two, ch3x3red, ch3x3, 3, padding=1)
    three = _basic_conv(graph, f"{prefix}.branch3.0", source, in_channels, ch5x5red, 1)
    three = _basic_conv(graph, f"{prefix}.branch3.1", three, ch5x5red, ch5x5, 3, padding=1)
    pooled = graph.add(f"{prefix}.branch4.0", MaxPool2d(3, 1, 1, ceil_mode=True), source)
    four = _basic_conv(graph, f"{prefix}.branch4.1", pooled, in_channels, pool_proj, 1)
    return graph.add(f"{prefix}.cat", Concat(), one, two, three, four), ch1x1 + ch3x3 + ch5x5 + pool_proj


def googlenet(num_classes: int = 1000) -> Network:
    """GoogLeNet (Inception v1) in torchvision's layout, at inference without the auxiliary classifiers."""
    graph = GraphBuilder()
    _basic_conv(graph, "conv1", "input", 3, 64, 7, 2, 3)
    graph.add("maxpool1", MaxPool2d(3, 2, ceil_mode=True))
    _basic_conv(graph, "conv2", graph.last, 64, 64, 1)
    _basic_conv(graph, "conv3", graph.last, 64, 192, 3, padding=1)
    x = graph.add("maxpool2", MaxPool2d(3, 2, ceil_mode=True))
    channels = 192
    stages = {
        "3": [("a", 64, 96, 128, 16, 32, 32), ("b", 128, 128, 192, 32, 96, 64)],
        "4": [("a", 192, 96, 208, 16, 48, 64), ("b", 160, 112, 224, 24, 64, 64), ("c", 128, 128, 256, 24, 64, 64),
              ("d", 112, 144, 288, 32, 64, 64), ("e", 256, 160, 320, 32, 128, 128)],
        "5": [("a", 256, 160, 320, 32, 128, 128), ("b", 384, 192, 384, 48, 128, 128)],
    }
    pools = {"3": MaxPool2d(3, 2, ceil_mode=True), "4": MaxPool2d(2, 2, ceil_mode=True)}
    for stage, modules in stages.items():
        for letter, *widths in modules:
            x, channels = _inception(graph, f"inception{stage}{letter}", x, channels, *widths)
        if stage in pools:
            x = graph.add(f"maxpool{stage}", pools[stage])
    _classifier(graph, channels, num_classes, dropout=0.2)
    return graph.build("googlenet", (3, 224, 224), Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                       "GoogLeNet / Inception v1 (torchvision layout, no auxiliary heads)")

"""PyTorch modules with torchvision's module layout (so the same ``state_dict`` keys): the references of the zoo's
DAG models for the tests and ``scripts/bench_dag.py``.

torchvision itself is not installable next to the pinned torch wheel, so the zoo's DAG models are checked
against these small, independent definitions: same module names, plain ``forward`` code. Importing this module
needs PyTorch (the ``test`` and ``bench`` extras).
"""

import torch
from torch import nn

__all__ = ["MODULES", "torch_model"]


def conv_bn(cin, cout, kernel, stride=1, padding=0, groups=1, eps=1e-5):
    return [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=eps)]


class BasicBlock(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, width, 3, stride, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, 1, 1)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(*conv_bn(cin, width, 1, stride)) if stride != 1 or cin != width else None

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride, 1)
        self.conv3, self.bn3 = conv_bn(width, 4 * width, 1)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(*conv_bn(cin, 4 * width, 1, stride)) if stride != 1 or cin != 4 * width \
            else None

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + skip)


class ResNet(nn.Module):
    def __init__(self, blocks, bottleneck):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 64, 7, 2, 3)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block_type = Bottleneck if bottleneck else BasicBlock
        cin = 64
        for stage, count in enumerate(blocks):
            width = 64 << stage
            stage_blocks = []
            for index in range(count):
                stage_blocks.append(block_type(cin, width, 2 if stage and not index else 1))
                cin = width * (4 if bottleneck else 1)
            setattr(self, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_bn_relu6(cin, cout, kernel, stride=1, groups=1):
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride, (kernel - 1) // 2, groups), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expansion):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn_relu6(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden), *conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]
        features = [conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for expansion, cout, repeats, stride in settings:
            for index in range(repeats):
                features.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expansion))
                cin = cout
        features.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def conv_bn_act(cin, cout, kernel, stride=1, groups=1, activation=None):
    layers = conv_bn(cin, cout, kernel, stride, (kernel - 1) // 2, groups, eps=1e-3)
    return nn.Sequential(*layers, *([activation()] if activation is not None else []))


class InvertedResidualV3(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, se, hard, stride):
        super().__init__()
        activation = nn.Hardswish if hard else nn.ReLU
        layers = [conv_bn_act(cin, expanded, 1, activation=activation)] if expanded != cin else []
        layers.append(conv_bn_act(expanded, expanded, kernel, stride, expanded, activation))
        if se:
            layers.append(SqueezeExcitation(expanded, max(8, (expanded // 4 + 4) // 8 * 8)))
        layers.append(conv_bn_act(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV3Small(nn.Module):
    def __init__(self):
        super().__init__()
        settings = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
                    (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1),
                    (40, 5, 240, 40, True, True, 1), (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
                    (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1)]
        features = [conv_bn_act(3, 16, 3, 2, activation=nn.Hardswish)]
        features += [InvertedResidualV3(*setting) for setting in settings]
        features.append(conv_bn_act(96, 576, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, squeeze, 1), nn.ReLU()
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, expand, 1), nn.ReLU()
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU()

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    def __init__(self):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), Fire(64, 16, 64), Fire(128, 16, 64), pool(),
            Fire(128, 32, 128), Fire(256, 32, 128), pool(), Fire(256, 48, 192), Fire(384, 48, 192),
            Fire(384, 64, 256), Fire(512, 64, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv, self.bn = conv_bn(cin, cout, kernel, stride, padding, eps=1e-3)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, cin, ch1, ch3red, ch3, ch5red, ch5, proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, ch1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, ch3red, 1), BasicConv2d(ch3red, ch3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, ch5red, 1), BasicConv2d(ch5red, ch5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, 7, 2, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, 1000)

    def forward(self, x):
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for name in "abcde":
            x = getattr(self, f"inception4{name}")(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


MODULES = {
    "resnet18": lambda: ResNet((2, 2, 2, 2), False),
    "resnet34": lambda: ResNet((3, 4, 6, 3), False),
    "resnet50": lambda: ResNet((3, 4, 6, 3), True),
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3Small,
    "squeezenet1_1": SqueezeNet11,
    "googlenet": GoogLeNet,
}


def torch_model(name: str, weights: dict) -> nn.Module:
    """The reference module of a zoo model with ``weights`` (a dcnn state dict of numpy arrays) loaded strictly,
    in eval mode. Raises ``RuntimeError`` (PyTorch's) for a missing, extra or misshapen key."""
    module = MODULES[name]()
    state = {key: torch.from_numpy(value) for key, value in weights.items()}
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    module.load_state_dict(state, strict=True)
    return module.eval()

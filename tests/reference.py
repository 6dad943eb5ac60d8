"""Slow, obvious reference implementations that the fast kernels are tested against.

Each one loops over output pixels and reads the definition straight off the page; none shares code with
:mod:`dcnn.kernels`. float64 throughout.
"""

import math

import numpy as np


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """Direct-loop cross-correlation; padding is (top, bottom, left, right)."""
    batch, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    top, bottom, left, right = padding
    padded = np.zeros((batch, channels, height + top + bottom, width + left + right))
    padded[:, :, top:top + height, left:left + width] = x
    out_h = (height + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (width + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((batch, out_channels, out_h, out_w))
    per_group = out_channels // groups
    for k in range(out_channels):
        g = k // per_group
        for i in range(out_h):
            for j in range(out_w):
                total = np.zeros(batch)
                for c in range(group_channels):
                    for a in range(kh):
                        for b in range(kw):
                            total += (padded[:, g * group_channels + c, i * stride[0] + a * dilation[0],
                                             j * stride[1] + b * dilation[1]] * weight[k, c, a, b])
                out[:, k, i, j] = total + (0.0 if bias is None else bias[k])
    return out


def pool2d(x, kernel, stride, padding, ceil_mode, mode, count_include_pad=True, dilation=(1, 1)):
    """PyTorch's MaxPool2d / AvgPool2d semantics by enumeration of windows (symmetric padding)."""
    batch, channels, height, width = x.shape

    def length(size, axis):
        span = dilation[axis] * (kernel[axis] - 1) + 1
        numerator = size + 2 * padding[axis] - span
        n = (-(-numerator // stride[axis]) if ceil_mode else numerator // stride[axis]) + 1
        if ceil_mode and (n - 1) * stride[axis] >= size + padding[axis]:
            n -= 1
        return n

    out_h, out_w = length(height, 0), length(width, 1)
    out = np.zeros((batch, channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            rows = [i * stride[0] - padding[0] + a * dilation[0] for a in range(kernel[0])]
            cols = [j * stride[1] - padding[1] + b * dilation[1] for b in range(kernel[1])]
            inside = [(r, c) for r in rows for c in cols if 0 <= r < height and 0 <= c < width]
            if mode == "max":
                out[:, :, i, j] = np.max([x[:, :, r, c] for r, c in inside], axis=0)
            else:
                total = np.sum([x[:, :, r, c] for r, c in inside], axis=0)
                if count_include_pad:
                    r_end = min(i * stride[0] - padding[0] + kernel[0], height + padding[0])
                    c_end = min(j * stride[1] - padding[1] + kernel[1], width + padding[1])
                    divisor = (r_end - (i * stride[0] - padding[0])) * (c_end - (j * stride[1] - padding[1]))
                else:
                    divisor = len(inside)
                out[:, :, i, j] = total / divisor
    return out


def adaptive_avg_pool2d(x, output_size):
    """Mean over PyTorch's adaptive bins."""
    batch, channels, height, width = x.shape
    out = np.zeros((batch, channels, *output_size))
    for i in range(output_size[0]):
        r0, r1 = (i * height) // output_size[0], math.ceil((i + 1) * height / output_size[0])
        for j in range(output_size[1]):
            c0, c1 = (j * width) // output_size[1], math.ceil((j + 1) * width / output_size[1])
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def local_response_norm(x, size, alpha, beta, k):
    """Channel-window sum of squares, window [c - size//2, c + (size-1)//2]."""
    channels = x.shape[1]
    out = np.zeros_like(x, dtype=np.float64)
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)
        total = (x[:, lo:hi].astype(np.float64) ** 2).sum(axis=1)
        out[:, c] = x[:, c] / (k + alpha / size * total) ** beta
    return out


def forward(network, weights, x):
    """Run a network layer by layer with the references above and plain numpy for the rest."""
    from dcnn.network import layers as L

    x = x.astype(np.float64)
    for name, layer in network.layers:
        w = {key[len(name) + 1:]: v.astype(np.float64) for key, v in weights.items() if key.startswith(name + ".")}
        if isinstance(layer, L.Conv2d):
            p = layer.padding
            x = conv2d(x, w["weight"], w.get("bias"), layer.stride, (p[0], p[0], p[1], p[1]), layer.dilation,
                       layer.groups)
        elif isinstance(layer, L.AvgPool2d):
            x = pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, "avg",
                       layer.count_include_pad)
        elif isinstance(layer, L.MaxPool2d):
            x = pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, "max",
                       dilation=layer.dilation)
        elif isinstance(layer, L.AdaptiveAvgPool2d):
            x = adaptive_avg_pool2d(x, layer.output_size)
        elif isinstance(layer, L.BatchNorm2d):
            shape = (1, -1, 1, 1)
            x = ((x - w["running_mean"].reshape(shape)) / np.sqrt(w["running_var"].reshape(shape) + layer.eps)
                 * w["weight"].reshape(shape) + w["bias"].reshape(shape))
        elif isinstance(layer, L.Linear):
            x = x @ w["weight"].T + (w["bias"] if "bias" in w else 0)
        elif isinstance(layer, L.Flatten):
            x = x.reshape(x.shape[0], -1)
        elif isinstance(layer, L.ReLU):
            x = np.maximum(x, 0)
        elif isinstance(layer, L.Tanh):
            x = np.tanh(x)
        elif isinstance(layer, L.LeakyReLU):
            x = np.where(x > 0, x, layer.negative_slope * x)
        elif isinstance(layer, L.ELU):
            x = np.where(x > 0, x, layer.alpha * (np.exp(x) - 1))
        elif isinstance(layer, L.LocalResponseNorm):
            x = local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
        elif isinstance(layer, L.Affine):
            x = x * w["weight"].reshape(1, -1, 1, 1) + w["bias"].reshape(1, -1, 1, 1)
        elif isinstance(layer, L.Softmax):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        elif isinstance(layer, L.Dropout):
            pass
        else:
            raise NotImplementedError(type(layer))
    return x


def pixels_read(layer, in_shape, out_box):
    """Input pixels (an ``(H, W)`` bool mask of ``in_shape``) that the outputs ``out_box`` of a layer read, by
    enumerating every window tap (PyTorch's padding); a pointwise layer reads the same pixels."""
    mask = np.zeros(in_shape[1:], bool)
    if layer.window is None:
        mask[out_box.slices()] = True
        return mask
    window = layer.window
    (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.stride, window.dilation
    top, _, left, _ = window.explicit_padding(in_shape[1], in_shape[2])
    for i in range(out_box.top, out_box.bottom):
        for j in range(out_box.left, out_box.right):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * sh - top + a * dh, j * sw - left + b * dw
                    if 0 <= r < in_shape[1] and 0 <= c < in_shape[2]:
                        mask[r, c] = True
    return mask

"""Activations, normalisation, fully connected and output kernels, float32.

Activations work in place where the caller allows it (``out=x``), because inference never needs the
pre-activation values again. ReLU, ReLU6 and Clip are one ``numpy.clip`` pass: numpy's ``clip`` loop is
vectorised, while ``numpy.maximum`` with a scalar ran about 3.5x slower on the project's machine (200,000 float32
in place: 75 against 22 microseconds; numpy 2, AMD EPYC).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d

from dcnn.kernels.threads import use_blas_threads

__all__ = [
    "affine_channels", "batch_norm_scale_shift", "channel_shuffle", "clip", "elu", "hardsigmoid", "hardswish",
    "leaky_relu", "linear", "local_response_norm", "padded_add", "prelu", "relu", "relu6", "sigmoid", "silu", "softmax",
    "tanh",
]


def relu(x: np.ndarray, out: np.ndarray | None = None, cap: float = np.inf) -> np.ndarray:
    """``max(x, 0)``, or ``min(max(x, 0), cap)`` for a finite ``cap`` (6: ReLU6)."""
    return np.clip(x, np.float32(0), np.float32(cap), out=out)


def relu6(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``min(max(x, 0), 6)``."""
    return relu(x, out, 6.0)


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-x))``, without overflow: ``(1 + tanh(x / 2)) / 2``."""
    out = np.multiply(x, np.float32(0.5), out=out)
    np.tanh(out, out=out)
    out += np.float32(1)
    out *= np.float32(0.5)
    return out


def silu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x * sigmoid(x)`` (Elfwing et al., 2018; PyTorch's SiLU)."""
    gate = sigmoid(x)
    return np.multiply(x, gate, out=out)


def hardsigmoid(x: np.ndarray, out: np.ndarray | None = None, alpha: float = 1 / 6, beta: float = 0.5
                ) -> np.ndarray:
    """``clip(alpha x + beta, 0, 1)``: PyTorch's Hardsigmoid with the defaults, ONNX's HardSigmoid with its
    ``alpha`` and ``beta``."""
    out = np.multiply(x, np.float32(alpha), out=out)
    out += np.float32(beta)
    return np.clip(out, np.float32(0), np.float32(1), out=out)


def clip(x: np.ndarray, low: float, high: float, out: np.ndarray | None = None) -> np.ndarray:
    """``min(max(x, low), high)`` (ONNX's Clip; all values become ``high`` when ``low > high``, as ONNX
    specifies)."""
    return np.clip(x, np.float32(low), np.float32(high), out=out)


def hardswish(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x * clip(x + 3, 0, 6) / 6`` (Howard et al., 2019, MobileNetV3; PyTorch's Hardswish)."""
    gate = hardsigmoid(x)
    return np.multiply(x, gate, out=out)


def prelu(x: np.ndarray, slopes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` where positive, ``slopes[c] * x`` elsewhere; one slope for all channels or one per channel.

    ``x`` is ``(B, C, ...)``; ``slopes`` has 1 or ``C`` elements.
    """
    # max(x, 0) + a * min(x, 0) holds for any slope a, also outside [0, 1].
    negative = np.minimum(x, np.float32(0)) * slopes.astype(np.float32).reshape(-1, *([1] * (x.ndim - 2)))
    result = np.maximum(x, np.float32(0), out=out)
    result += negative
    return result


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` where positive, ``negative_slope * x`` elsewhere (for ``0 <= negative_slope <= 1``)."""
    if not 0 <= negative_slope <= 1:
        return np.where(x > 0, x, np.float32(negative_slope) * x).astype(np.float32, copy=False)
    return np.maximum(x, np.float32(negative_slope) * x, out=out)


def elu(x: np.ndarray, alpha: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere."""
    # max(x, 0) + alpha * expm1(min(x, 0)) is x where positive and alpha * (exp(x) - 1) elsewhere.
    negative = np.float32(alpha) * np.expm1(np.minimum(x, np.float32(0)))
    result = np.maximum(x, np.float32(0), out=out)
    result += negative
    return result


def tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(x, out=out)


def batch_norm_scale_shift(weight: np.ndarray, bias: np.ndarray, running_mean: np.ndarray,
                           running_var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference batch norm into a per-channel ``scale * x + shift``."""
    scale = (weight.astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps))
    shift = bias.astype(np.float64) - running_mean.astype(np.float64) * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def affine_channels(x: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Per-channel ``scale * x + shift`` on ``(B, C, H, W)`` (batch norm at inference, dlib's ``affine``), or
    per feature on ``(B, F)``."""
    per_axis = (-1, *([1] * (x.ndim - 2)))
    out = np.multiply(x, scale.reshape(per_axis), out=out)
    out += shift.reshape(per_axis)
    return out


def padded_add(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The sum of two ``(B, C, H, W)`` maps over the larger extent of every axis, each zero-filled at the end
    of the axes where it is smaller (dlib's ``add_prev``; ``tt::add`` of tensors of different sizes).

    Returns a new float32 array; the inputs are left as they are.
    """
    shape = tuple(max(a, b) for a, b in zip(first.shape, second.shape))
    out = np.zeros(shape, np.float32)
    out[tuple(slice(0, n) for n in first.shape)] = first
    out[tuple(slice(0, n) for n in second.shape)] += second
    return out


def local_response_norm(x: np.ndarray, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> np.ndarray:
    """Local response normalisation across channels, as :class:`torch.nn.LocalResponseNorm`.

    ``b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta``, with the window of ``size``
    channels padded with zeros, ``size // 2`` before and ``(size - 1) // 2`` after channel ``c``.
    """
    squares = np.square(x, dtype=np.float32)
    # uniform_filter1d's window for an even size also reaches size // 2 before and (size - 1) // 2 after.
    window_mean = uniform_filter1d(squares, size=size, axis=1, mode="constant", cval=0.0)
    denominator = np.power(np.float32(k) + np.float32(alpha) * window_mean, np.float32(beta))
    return (x / denominator).astype(np.float32, copy=False)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Fully connected layer: ``x @ weight.T + bias`` for ``x`` of shape ``(B, in)``, weight ``(out, in)``.

    The product runs on every kernel thread inside BLAS (:func:`dcnn.kernels.threads.use_blas_threads`). A batch
    of several rows is computed as ``(weight @ x.T).T``: with the weights as the GEMM's left operand OpenBLAS
    streams them once for all rows (VGG-16's 25088 -> 4096 layer at batch 4: 17.6 ms per image instead of 22.7,
    at batch 2 32 instead of 45; measured in CPU time on the project's machine).
    """
    use_blas_threads()
    out = x @ weight.T if len(x) == 1 else np.ascontiguousarray((weight @ x.T).T)
    if bias is not None:
        out += bias
    return out


def softmax(x: np.ndarray, axis: int | None = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` of ``x``; ``None``: over all values of each image (every axis
    but the first, the batch)."""
    if axis is None:
        return softmax(x.reshape(x.shape[0], -1), axis=1).reshape(x.shape)
    shifted = x - x.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def channel_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """``(B, C, H, W)`` with its channels viewed as ``groups x (C / groups)`` and transposed: output channel
    ``j * groups + i`` is input channel ``i * (C / groups) + j`` (ShuffleNet's shuffle)."""
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, groups, channels // groups, *x.shape[2:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2)).reshape(x.shape)

"""Compile a network and its weights into runnable operations, once; run them on batches, many times.

Every engine runs layers through these ops: the single-process path calls them on whole images, the spatial
and fused engines on blocks with explicit border padding. A batch norm directly after a convolution is folded
into the convolution's weights, and a ReLU after either is fused into the convolution's output pass; the
absorbed layers keep their place in the op list as identities, so layer indices stay those of the network.

Folding is decided over exactly the layers one executor runs (``Forward(..., stop=k)`` runs layers ``0..k-1``
and never absorbs layer ``k``): an engine that hands its output to another executor at any layer index (the
fused block's last layer, a partial run) passes a map on which every layer before the boundary has acted once
and no layer after it has. :meth:`Forward.run` refuses a boundary inside a folded group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dcnn.kernels.conv import Conv2dKernel, Workspace
from dcnn.kernels.elementwise import (
    affine_channels,
    batch_norm_scale_shift,
    elu,
    leaky_relu,
    linear,
    local_response_norm,
    relu,
    softmax,
    tanh,
)
from dcnn.kernels.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from dcnn.network.graph import Network
from dcnn.network.layers import (
    ELU,
    AdaptiveAvgPool2d,
    Affine,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    ReLU,
    Softmax,
    Tanh,
)
from dcnn.network.window import Padding

__all__ = ["Forward", "LayerOp", "compile_layer"]


@dataclass
class LayerOp:
    """One layer ready to run.

    Attributes
    ----------
    name : str
        Layer name.
    layer : Layer
        Its spec.
    run : callable
        ``run(x, padding)`` on a ``(B, C, H, W)`` or ``(B, F)`` batch. ``padding`` is the explicit
        ``(top, bottom, left, right)`` padding for windowed layers, ``None`` for the layer's own.
    in_place : bool
        The op may overwrite its input (pointwise ops), so callers must not reuse the input afterwards.
    """

    name: str
    layer: Layer
    run: object
    in_place: bool = False

    def __call__(self, x: np.ndarray, padding: Padding | None = None) -> np.ndarray:
        return self.run(x, padding)  # type: ignore[operator]


def _own_padding(layer: Layer, x: np.ndarray, padding: Padding | None) -> Padding:
    if padding is not None:
        return padding
    return layer.window.explicit_padding(x.shape[2], x.shape[3])  # type: ignore[union-attr]


def _identity(x: np.ndarray, padding: Padding | None) -> np.ndarray:
    return x


def compile_layer(name: str, layer: Layer, tensors: Mapping[str, np.ndarray],
                  folded_norm: tuple[np.ndarray, np.ndarray] | None = None,
                  workspace: Workspace | None = None, fused_relu: bool = False) -> LayerOp:
    """Build the op for one layer.

    Parameters
    ----------
    name : str
        Layer name (the prefix of its tensors' keys).
    layer : Layer
        The spec.
    tensors : mapping
        The layer's tensors by suffix (``weight``, ``bias``, ...).
    folded_norm : tuple of numpy.ndarray, optional
        ``(scale, shift)`` of a following batch norm to fold into a convolution.
    workspace : Workspace, optional
        Scratch buffers shared by the ops of one executor.
    fused_relu : bool
        Apply a following ReLU inside a convolution.
    """
    if isinstance(layer, Conv2d):
        weight = tensors["weight"]
        bias = tensors.get("bias")
        if folded_norm is not None:
            scale, shift = folded_norm
            weight = weight * scale[:, None, None, None]
            bias = shift if bias is None else bias * scale + shift
        kernel = Conv2dKernel(weight, bias, layer.stride, layer.dilation, layer.groups, relu=fused_relu)
        return LayerOp(name, layer, lambda x, p: kernel(x, _own_padding(layer, x, p), workspace))
    if isinstance(layer, AvgPool2d):
        def run_avg(x, p):
            padding = _own_padding(layer, x, p)
            # Only the layer's symmetric padding counts in the divisor, never the ceil_mode overhang, also
            # when a spatial block passes its own border padding.
            vertical, horizontal = layer.padding
            counted = (min(padding[0], vertical), min(padding[1], vertical), min(padding[2], horizontal),
                       min(padding[3], horizontal)) if layer.count_include_pad else 0
            return avg_pool2d(x, layer.kernel_size, layer.stride, padding, counted)
        return LayerOp(name, layer, run_avg)
    if isinstance(layer, MaxPool2d):
        return LayerOp(name, layer, lambda x, p: max_pool2d(x, layer.kernel_size, layer.stride,
                                                            _own_padding(layer, x, p), layer.dilation))
    if isinstance(layer, AdaptiveAvgPool2d):
        return LayerOp(name, layer, lambda x, p: adaptive_avg_pool2d(x, layer.output_size))
    if isinstance(layer, BatchNorm2d):
        scale, shift = batch_norm_scale_shift(tensors["weight"], tensors["bias"], tensors["running_mean"],
                                              tensors["running_var"], layer.eps)
        return LayerOp(name, layer, lambda x, p: affine_channels(x, scale, shift, out=x), in_place=True)
    if isinstance(layer, Affine):
        gamma, beta = tensors["weight"], tensors["bias"]
        return LayerOp(name, layer, lambda x, p: affine_channels(x, gamma, beta, out=x), in_place=True)
    if isinstance(layer, Linear):
        weight, bias = tensors["weight"], tensors.get("bias")
        return LayerOp(name, layer, lambda x, p: linear(x, weight, bias))
    if isinstance(layer, Flatten):
        return LayerOp(name, layer, lambda x, p: x.reshape(x.shape[0], -1), in_place=True)
    pointwise = {
        ReLU: lambda x, p: relu(x, out=x),
        LeakyReLU: lambda x, p: leaky_relu(x, layer.negative_slope, out=x),  # type: ignore[attr-defined]
        ELU: lambda x, p: elu(x, layer.alpha, out=x),  # type: ignore[attr-defined]
        Tanh: lambda x, p: tanh(x, out=x),
        Dropout: _identity,
    }
    if type(layer) in pointwise:
        return LayerOp(name, layer, pointwise[type(layer)], in_place=True)
    if isinstance(layer, LocalResponseNorm):
        return LayerOp(name, layer, lambda x, p: local_response_norm(x, layer.size, layer.alpha, layer.beta,
                                                                     layer.k))
    if isinstance(layer, Softmax):
        return LayerOp(name, layer, lambda x, p: softmax(x, axis=1))
    raise TypeError(f"no kernel for layer type {type(layer).__name__}")


class Forward:
    """A network with its weights, compiled for repeated inference on one process.

    Parameters
    ----------
    network : Network
        The model.
    weights : mapping
        Validated weights by ``state_dict`` key (see :func:`dcnn.network.weights.validate_weights`).
    fuse : bool
        Fold batch norm that directly follows a convolution into its weights, and fuse a ReLU that follows
        either into the convolution.
    stop : int, optional
        Compile only layers ``0 .. stop - 1`` (default: all); nothing is folded across ``stop``.

    Attributes
    ----------
    ops : list of LayerOp
        One op per compiled layer, by layer index (absorbed layers are identities).
    boundaries : frozenset of int
        The layer indices at which a partial run may start or stop: every index except those of absorbed layers.

    Examples
    --------
    >>> from dcnn.network.zoo import get_model
    >>> from dcnn.network.weights import init_weights
    >>> net = get_model("lenet5")
    >>> forward = Forward(net, init_weights(net))
    >>> forward(np.zeros((2, 1, 32, 32), np.float32)).shape
    (2, 10)
    """

    def __init__(self, network: Network, weights: Mapping[str, np.ndarray], fuse: bool = True,
                 stop: int | None = None):
        self.network = network
        self.workspace = Workspace()
        self.ops: list[LayerOp] = []
        layers = list(network.layers)[:stop]
        absorbed: set[int] = set()
        for index, (name, layer) in enumerate(layers):
            if index in absorbed:
                self.ops.append(LayerOp(name, layer, _identity, in_place=True))
                continue
            folded, fused_relu = None, False
            following = index + 1
            if fuse and isinstance(layer, Conv2d):
                if following < len(layers) and isinstance(layers[following][1], BatchNorm2d):
                    norm_name, norm = layers[following]
                    folded = batch_norm_scale_shift(
                        weights[f"{norm_name}.weight"], weights[f"{norm_name}.bias"],
                        weights[f"{norm_name}.running_mean"], weights[f"{norm_name}.running_var"], norm.eps)
                    absorbed.add(following)
                    following += 1
                if following < len(layers) and isinstance(layers[following][1], ReLU):
                    fused_relu = True
                    absorbed.add(following)
            tensors = {key[len(name) + 1:]: value for key, value in weights.items() if key.startswith(name + ".")}
            self.ops.append(compile_layer(name, layer, tensors, folded, self.workspace, fused_relu))
        self.boundaries = frozenset(range(len(layers) + 1)) - absorbed

    def run(self, x: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Run layers ``start`` to ``stop`` (exclusive) on a batch; the input is never modified.

        Raises
        ------
        ValueError
            If ``start`` or ``stop`` falls inside a folded group (a layer absorbed into the one before it):
            compile an executor with ``stop`` there instead.
        """
        for end in (start, len(self.ops) if stop is None else stop):
            if end not in self.boundaries:
                raise ValueError(f"layer {end} ({self.ops[end].name}) is folded into the layer before it; "
                                 f"compile a Forward with stop={end} to end a run there")
        owned = False
        for op in self.ops[start:stop]:
            if op.in_place and not owned:
                x = x.copy()
            x = op(x)
            owned = True
        return x

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the whole network on a ``(B, C, H, W)`` float32 batch."""
        return self.run(np.asarray(x, dtype=np.float32))

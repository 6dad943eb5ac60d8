"""Compile a network and its weights into runnable operations, once; run them on batches, many times.

Every engine runs layers through these ops: the single-process path calls them on whole images, the spatial
and fused engines on blocks with explicit border padding. A batch norm (or per-channel affine) that is the only
reader of a convolution's output is folded into the convolution's weights, and a ReLU (or ReLU6, or a Clip from
0) that is the only reader of either is fused into the convolution's output pass (:func:`fusion_plan`); the
absorbed layers keep their place in the op list as identities, so layer indices stay those of the network.

:meth:`Forward.run` executes the network's nodes in topological order: each tensor is freed after its last
reader, and an in-place op (activations, batch norm, a residual add) overwrites its input only when that input
is a tensor of this run that no later node reads.

Folding is decided over exactly the layers one executor runs (``Forward(..., stop=k)`` runs layers ``0..k-1``
and never absorbs layer ``k``): an engine that hands its output to another executor at any layer index (the
fused block's last layer, a partial run) passes a map on which every layer before the boundary has acted once
and no layer after it has. :meth:`Forward.run` refuses a boundary inside a folded group.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.conv import Conv2dKernel, Workspace
from dcnn.kernels.depthwise import conv_kernel
from dcnn.kernels.elementwise import (
    affine_channels,
    batch_norm_scale_shift,
    channel_shuffle,
    clip,
    elu,
    hardsigmoid,
    hardswish,
    leaky_relu,
    linear,
    local_response_norm,
    padded_add,
    prelu,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from dcnn.kernels.memory import empty_float32
from dcnn.kernels.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d, pad2d
from dcnn.kernels.threads import stop_if_cancelled
from dcnn.network.graph import INPUT, Network
from dcnn.network.layers import (
    ELU,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    Add,
    Affine,
    AvgPool2d,
    BatchNorm2d,
    ChannelShuffle,
    Clip,
    Concat,
    Conv2d,
    Dropout,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Layer,
    LeakyReLU,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    Mul,
    Pad2d,
    PaddedAdd,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from dcnn.network.window import Padding, Window

__all__ = ["Forward", "LayerOp", "apply_op", "channels_last_layers", "compile_layer", "fusion_plan", "relu_cap"]

#: A block of images keeps the tensors alive at each of its layers within ``1 / BLOCK_CACHE_SHARE`` of the L3
#: counted by :func:`~dcnn.kernels.cache.cache_bytes` (at most 4 MiB per core): the rest of the socket's cache holds
#: the layer's filters (Winograd's transformed 256 -> 256 filters are 9.4 MB), its band scratch and the other
#: cores' data. Measured on VGG-16 at batch 4 (CPU time, interleaved runs) with 8 MiB per block: on a 2-core AMD
#: EPYC (32 MiB L3), one image up to the 56x56 layers and the whole batch after them took 229-246 ms per image; one
#: image throughout, 250-261; blocks of two or four images from the 112x112 or 56x56 layers on, 239-259. On a 2-core
#: Intel Xeon virtual machine that reads a 300 MiB L3, 8 MiB blocks took 0.90 of batch 1's time per image, the whole
#: batch throughout 0.95 (15 runs each).
BLOCK_CACHE_SHARE = 1


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
        ``run(x, padding)`` on a ``(B, C, H, W)`` or ``(B, F)`` batch, or on a list of them for layers with
        several inputs (add, mul, concat). ``padding`` is the explicit ``(top, bottom, left, right)`` padding
        for windowed layers, ``None`` for the layer's own.
    in_place : bool
        The op may overwrite (or return a view of) its first input, so callers must not reuse that input
        afterwards.
    kernel : object or None
        A convolution's kernel (:func:`dcnn.kernels.depthwise.conv_kernel`), else ``None``.
    """

    name: str
    layer: Layer
    run: object
    in_place: bool = False
    kernel: object | None = None

    def __call__(self, x: np.ndarray, padding: Padding | None = None) -> np.ndarray:
        return self.run(x, padding)  # type: ignore[operator]


def _own_padding(layer: Layer, x: np.ndarray, padding: Padding | None) -> Padding:
    if padding is not None:
        return padding
    return _explicit_padding(layer.window, x.shape[2], x.shape[3])  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def _explicit_padding(window: Window, height: int, width: int) -> Padding:
    """:meth:`Window.explicit_padding`, kept per window and map size: a network asks for the same few on every
    pass (recomputing them cost MobileNetV2 about 0.3 ms of Python per pass)."""
    return window.explicit_padding(height, width)


def _in_place_reader(op: LayerOp | None) -> Conv2dKernel | None:
    """``op``'s kernel if it can read its input in place (:meth:`Conv2dKernel.reads_in_place`), its layer being
    unpadded; else ``None``."""
    kernel = None if op is None else op.kernel
    if isinstance(kernel, Conv2dKernel) and kernel.reads_in_place() and not any(op.layer.window.declared_padding()):
        return kernel
    return None


def _identity(x: np.ndarray, padding: Padding | None) -> np.ndarray:
    return x


def compile_layer(name: str, layer: Layer, tensors: Mapping[str, np.ndarray],
                  folded_norm: tuple[np.ndarray, np.ndarray] | None = None,
                  workspace: Workspace | None = None, fused_relu: float | None = None,
                  map_size: tuple[int, int] | None = None, channels_last: bool = False) -> LayerOp:
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
    fused_relu : float, optional
        Apply a following ReLU inside a convolution, capped at this value (infinite for a ReLU, 6 for ReLU6;
        :func:`relu_cap`).
    map_size : tuple of int, optional
        A convolution's output map at the network's declared input (its kernel's choice of method).
    channels_last : bool
        Run a pointwise convolution channels-last (:func:`channels_last_layers`).
    """
    if isinstance(layer, Conv2d):
        weight = tensors["weight"]
        bias = tensors.get("bias")
        if folded_norm is not None:
            scale, shift = folded_norm
            weight = weight * scale[:, None, None, None]
            bias = shift if bias is None else bias * scale + shift
        kernel = conv_kernel(weight, bias, layer.stride, layer.dilation, layer.groups, relu=fused_relu is not None,
                             relu_cap=math.inf if fused_relu is None else fused_relu, map_size=map_size,
                             channels_last=channels_last)
        if isinstance(kernel, Conv2dKernel) and fused_relu is not None and fused_relu < math.inf:
            def run_capped(x, p):
                # The general kernel fuses the ReLU only; its cap is one more pass over its fresh output.
                out = kernel(x, _own_padding(layer, x, p), workspace)
                return relu(out, out=out, cap=fused_relu)
            return LayerOp(name, layer, run_capped, kernel=kernel)
        return LayerOp(name, layer, lambda x, p: kernel(x, _own_padding(layer, x, p), workspace), kernel=kernel)
    if isinstance(layer, AvgPool2d):
        def run_avg(x, p):
            padding = _own_padding(layer, x, p)
            # Only the layer's declared padding counts in the divisor, never the ceil_mode overhang, also
            # when a spatial block passes its own border padding.
            declared = layer.window.declared_padding()
            counted = tuple(min(given, side) for given, side in zip(padding, declared)) \
                if layer.count_include_pad else 0
            return avg_pool2d(x, layer.kernel_size, layer.stride, padding, counted)
        return LayerOp(name, layer, run_avg)
    if isinstance(layer, MaxPool2d):
        return LayerOp(name, layer, lambda x, p: max_pool2d(x, layer.kernel_size, layer.stride,
                                                            _own_padding(layer, x, p), layer.dilation))
    if isinstance(layer, AdaptiveAvgPool2d):
        return LayerOp(name, layer, lambda x, p: adaptive_avg_pool2d(x, layer.output_size))
    if isinstance(layer, AdaptiveMaxPool2d):
        return LayerOp(name, layer, lambda x, p: adaptive_max_pool2d(x, layer.output_size))
    if isinstance(layer, ChannelShuffle):
        return LayerOp(name, layer, lambda x, p: channel_shuffle(x, layer.groups))
    if isinstance(layer, Pad2d):
        return LayerOp(name, layer, lambda x, p: pad2d(x, _own_padding(layer, x, p), layer.value))
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
        ReLU6: lambda x, p: relu6(x, out=x),
        LeakyReLU: lambda x, p: leaky_relu(x, layer.negative_slope, out=x),  # type: ignore[attr-defined]
        ELU: lambda x, p: elu(x, layer.alpha, out=x),  # type: ignore[attr-defined]
        Tanh: lambda x, p: tanh(x, out=x),
        Sigmoid: lambda x, p: sigmoid(x, out=x),
        SiLU: lambda x, p: silu(x, out=x),
        Hardsigmoid: lambda x, p: hardsigmoid(x, out=x, alpha=layer.alpha, beta=layer.beta),  # type: ignore[attr-defined]
        Clip: lambda x, p: clip(x, layer.min_value, layer.max_value, out=x),  # type: ignore[attr-defined]
        Hardswish: lambda x, p: hardswish(x, out=x),
        Dropout: _identity,
        # The executor puts an input it may overwrite first (addition commutes); gates broadcast over H x W.
        Add: lambda xs, p: np.add(xs[0], xs[1], out=xs[0]),
        Mul: lambda xs, p: np.multiply(xs[0], xs[1], out=xs[0]),
    }
    if type(layer) in pointwise:
        return LayerOp(name, layer, pointwise[type(layer)], in_place=True)
    if isinstance(layer, PReLU):
        slopes = tensors["weight"]
        return LayerOp(name, layer, lambda x, p: prelu(x, slopes, out=x), in_place=True)
    if isinstance(layer, PaddedAdd):
        return LayerOp(name, layer, lambda xs, p: padded_add(xs[0], xs[1]))
    if isinstance(layer, Concat):
        return LayerOp(name, layer, lambda xs, p: np.concatenate(xs, axis=1))
    if isinstance(layer, LocalResponseNorm):
        return LayerOp(name, layer, lambda x, p: local_response_norm(x, layer.size, layer.alpha, layer.beta,
                                                                     layer.k))
    if isinstance(layer, Softmax):
        return LayerOp(name, layer, lambda x, p: softmax(x, None if layer.axis is None else layer.axis + 1))
    raise TypeError(f"no kernel for layer type {type(layer).__name__}")


def apply_op(op: LayerOp, arguments: list[np.ndarray], writable: list[bool],
             padding: Padding | None = None) -> np.ndarray:
    """Run ``op`` on its input arrays, overwriting one only where the caller allows it.

    Parameters
    ----------
    op : LayerOp
        The op.
    arguments : list of numpy.ndarray
        One array per input of the node, in the network's order.
    writable : list of bool
        Per argument, whether the caller lets the op overwrite it (an array the run owns that no later node
        reads). An in-place op whose first argument is not writable works on a copy of it; an addition first
        swaps its arguments when only the second one is writable.
    padding : tuple of int, optional
        Explicit padding of a windowed op.
    """
    arguments, writable = list(arguments), list(writable)
    if op.in_place and isinstance(op.layer, Add) and not writable[0] and writable[1]:
        arguments.reverse()
        writable.reverse()
    if op.in_place and not writable[0]:
        arguments[0] = arguments[0].copy()
    return op(arguments[0] if len(arguments) == 1 else arguments, padding)


def relu_cap(layer: Layer) -> float | None:
    """The cap ``c`` if ``layer`` computes ``min(max(x, 0), c)`` (ReLU: infinite, ReLU6: 6, a Clip from 0), else
    ``None``."""
    if isinstance(layer, ReLU):
        return math.inf
    if isinstance(layer, ReLU6):
        return 6.0
    if isinstance(layer, Clip) and layer.min_value == 0 and layer.max_value >= 0:
        return float(layer.max_value)
    return None


def _is_depthwise(layer: Layer) -> bool:
    return isinstance(layer, Conv2d) and 1 < layer.groups == layer.in_channels


def channels_last_layers(network: Network) -> set[int]:
    """The 1x1 convolutions that read from or feed a depthwise convolution, through batch norms and (capped)
    ReLUs only: MobileNet's expansions and projections. Their kernels run channels-last, as the depthwise kernel
    does on small maps, so that no transposed copy sits between them
    (:class:`~dcnn.kernels.depthwise.PointwiseConv2dKernel`).

    A property of the network alone (never of the layers one executor runs), so every engine runs a layer in
    the same layout and gets the same bits.
    """
    layers, readers = network.layers, network.consumers()
    position = {name: index for index, (name, _) in enumerate(layers)}

    def producer(index: int) -> int | None:  # the convolution behind a node's single input
        while len(network.inputs[index]) == 1 and network.inputs[index][0] in position:
            index = position[network.inputs[index][0]]
            if not (_is_norm(layers[index][1]) or _is_capped_relu(layers[index][1])):
                return index
        return None

    def feeds_depthwise(index: int) -> bool:
        pending = list(readers[layers[index][0]])
        while pending:
            reader = pending.pop()
            if _is_depthwise(layers[reader][1]):
                return True
            if _is_norm(layers[reader][1]) or _is_capped_relu(layers[reader][1]):
                pending.extend(readers[layers[reader][0]])
        return False

    chosen = set()
    for index, (_, layer) in enumerate(layers):
        if isinstance(layer, Conv2d) and layer.groups == 1 and layer.kernel_size == (1, 1):
            source = producer(index)
            if (source is not None and _is_depthwise(layers[source][1])) or feeds_depthwise(index):
                chosen.add(index)
    return chosen


def _is_norm(layer: Layer) -> bool:
    """A batch norm or per-channel affine: what a convolution before it folds (:func:`fusion_plan`)."""
    return isinstance(layer, (BatchNorm2d, Affine))


def _is_capped_relu(layer: Layer) -> bool:
    """A ReLU, ReLU6 or Clip from 0: what a convolution before it fuses (:func:`relu_cap`)."""
    return relu_cap(layer) is not None


def fusion_plan(network: Network, stop: int | None = None, start: int = 0) -> dict[int, tuple[int | None, bool]]:
    """Which layers each convolution absorbs: the one place that decides folding and fusion.

    A batch norm, or a per-channel affine (dlib's ``affine`` layer, a batch norm in inference form), is folded
    into the convolution before it when it is the only reader of the convolution's output, and a ReLU is fused
    when it is the only reader of the convolution's (or the folded layer's) output. A tensor with another
    reader (a residual skip, a branch) must keep its own values, so its producer absorbs nothing. ReLU6 and a
    Clip from 0 count as ReLUs with a cap (:func:`relu_cap`). Only layers
    ``start .. stop - 1`` (default: all) absorb or are absorbed: an executor that runs them never folds across
    either end.

    Returns
    -------
    dict
        ``{conv index: (folded batch-norm or affine index or None, whether the (capped) ReLU right after is
        fused)}`` for every convolution that absorbs something. The absorbed layers are the ones at
        ``conv index + 1`` (and ``+ 2``) in the network's order.
    """
    readers = network.consumers()
    last_uses = network.last_uses()
    layers = network.layers[:stop]

    def sole_reader(index: int, absorbs: Callable[[Layer], bool]) -> bool:
        """Whether the layer after ``index`` is one ``absorbs`` accepts and the only reader of its output."""
        name = layers[index][0]
        following = index + 1
        return (following < len(layers) and absorbs(layers[following][1])
                and readers[name] == [following] and last_uses[name] == following
                and network.inputs[following] == (name,))

    plan: dict[int, tuple[int | None, bool]] = {}
    for index, (_, layer) in enumerate(layers):
        if index < start or not isinstance(layer, Conv2d):
            continue
        norm = index + 1 if sole_reader(index, _is_norm) else None
        relu_fused = sole_reader(index if norm is None else norm, _is_capped_relu)
        if norm is not None or relu_fused:
            plan[index] = (norm, relu_fused)
    return plan


class Forward:
    """A network with its weights, compiled for repeated inference on one process.

    Parameters
    ----------
    network : Network
        The model (a chain or any DAG of nodes).
    weights : mapping
        Validated weights by ``state_dict`` key (see :func:`dcnn.network.weights.validate_weights`).
    fuse : bool
        Fold batch norm into the convolution before it and fuse a ReLU into it, where :func:`fusion_plan`
        finds that safe.
    stop : int, optional
        Compile only layers ``start .. stop - 1`` (default: all); nothing is folded across ``stop``.
    start : int
        The first layer to compile (the layers after a fused block); nothing is folded across it.

    Attributes
    ----------
    ops : list of LayerOp or None
        One op per compiled layer, by layer index (absorbed layers are identities; ``None`` before ``start``).
    boundaries : frozenset of int
        The layer indices at which a partial run may start or stop: every index except those of absorbed layers.
    cuts : frozenset of int
        The boundaries that only the previous node's output crosses (empty unless ``start`` is 0).
    head_stop : int or None
        The first node of the flat tail that :meth:`__call__` runs on the whole batch, if the network has one.

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
                 stop: int | None = None, start: int = 0):
        self.network = network
        self.workspace = Workspace()
        self.ops: list[LayerOp | None] = []
        layers = list(network.layers)[:stop]
        absorbed: set[int] = set()
        fusion = fusion_plan(network, len(layers), start) if fuse else {}
        declared = network.declared_map_sizes()
        channels_last = channels_last_layers(network)
        for index, (name, layer) in enumerate(layers):
            if index < start:
                self.ops.append(None)
                continue
            if index in absorbed:
                self.ops.append(LayerOp(name, layer, _identity, in_place=True))
                continue
            folded, fused_relu = None, None
            if index in fusion:
                norm, relu_fused = fusion[index]
                if norm is not None:
                    norm_name, spec = layers[norm]
                    folded = (weights[f"{norm_name}.weight"], weights[f"{norm_name}.bias"]) if isinstance(
                        spec, Affine) else batch_norm_scale_shift(
                        weights[f"{norm_name}.weight"], weights[f"{norm_name}.bias"],
                        weights[f"{norm_name}.running_mean"], weights[f"{norm_name}.running_var"],
                        spec.eps)  # type: ignore[attr-defined]
                    absorbed.add(norm)
                if relu_fused:
                    absorbed.add(index + 1 + (norm is not None))
                    fused_relu = relu_cap(layers[index + 1 + (norm is not None)][1])
            tensors = {key[len(name) + 1:]: value for key, value in weights.items() if key.startswith(name + ".")}
            self.ops.append(compile_layer(name, layer, tensors, folded, self.workspace, fused_relu,
                                          declared[index], index in channels_last))
        self.boundaries = frozenset(range(start, len(layers) + 1)) - absorbed
        self._read_in_place(absorbed)
        self.cuts = frozenset(self._single_cuts()) if start == 0 else frozenset()
        self.head_stop = self._flat_tail_start() if start == 0 else None

    def run(self, x: np.ndarray | Mapping[str, np.ndarray], start: int = 0, stop: int | None = None,
            seconds: np.ndarray | None = None) -> np.ndarray:
        """Run nodes ``start`` to ``stop`` (exclusive) on a batch; the input is never modified.

        ``x`` is the tensor node ``start`` reads (the network input for ``start == 0``, else node
        ``start - 1``'s output), or every tensor computed before ``start`` that the range reads, by name (what a
        fused block ending inside a residual block hands over, :func:`~dcnn.decomposition.fused.cut_tensors`);
        every node of the range must read only those and tensors computed in the range.
        Returns node ``stop - 1``'s output. ``seconds``, if given, gets each node's wall-clock seconds added at
        its index.

        Raises
        ------
        ValueError
            If a node of the range reads a tensor computed before it, or ``start`` or ``stop`` falls inside a
            folded group (a layer absorbed into the one before it): compile an executor with ``stop`` there
            instead.
        """
        stop = len(self.ops) if stop is None else stop
        for end in (start, stop):
            if end not in self.boundaries:
                raise ValueError(f"layer {end} ({self.ops[end].name}) is folded into the layer before it; "
                                 f"compile a Forward with stop={end} to end a run there")
        if start >= stop:
            return x
        names = [name for name, _ in self.network.layers]
        inputs = self.network.inputs
        source = INPUT if start == 0 else names[start - 1]
        # Readers left per tensor; the range's output is held by the caller.
        pending: dict[str, int] = {}
        for sources in inputs[start:stop]:
            for name in sources:
                pending[name] = pending.get(name, 0) + 1
        pending[names[stop - 1]] = pending.get(names[stop - 1], 0) + 1
        tensors = dict(x) if isinstance(x, Mapping) else {source: x}
        owned: set[str] = set()

        for index in range(start, stop):
            stop_if_cancelled()  # an interrupted run's task threads end here
            sources = inputs[index]
            missing = [name for name in sources if name not in tensors]
            if missing:
                raise ValueError(f"node {names[index]} reads {missing[0]!r}, computed before node {start}")
            writable = [name in owned and pending[name] == 1 for name in sources]
            began = time.perf_counter()
            out = apply_op(self.ops[index], [tensors[name] for name in sources], writable)
            if seconds is not None:
                seconds[index] += time.perf_counter() - began
            for name in sources:
                pending[name] -= 1
                if pending[name] == 0:
                    del tensors[name]
            tensors[names[index]] = out
            owned.add(names[index])
        return tensors[names[stop - 1]]

    def input_rows(self, height: int) -> int | None:
        """Rows per image of an input buffer that the first layer can read in place (:meth:`share_input`) for
        inputs of ``height`` rows, or ``None`` if it copies whatever it is given (see *Reading the layer before
        in place*, docs/architecture.md)."""
        kernel = _in_place_reader(self.ops[0]) if self.ops else None
        return None if kernel is None else kernel.stride[0] * kernel.rows_per_image(height, 0)

    def share_input(self, x: np.ndarray, rows: int, zero_from: int) -> None:
        """Let the first layer read ``x`` ``(B, C, H, W)`` in place on this thread's next run: a view of
        channels-last memory of :meth:`input_rows` rows per image, zeros from row ``zero_from`` on."""
        self.workspace.share_rows(x, rows, zero_from)

    def _read_in_place(self, absorbed: set[int]) -> None:
        """Let a kernel-row convolution read the one before it in place (:attr:`Conv2dKernel.reader`): where a
        convolution's output, through layers folded into it, is read only by the next convolution, unpadded, whose
        kernel can (:meth:`Conv2dKernel.feeds_in_place`). Saves that layer's copy of its input (the face detector:
        0.6 and 0.3 ms per image for its second and third layers)."""
        inputs, last = self.network.inputs, self.network.last_uses()
        names = [name for name, _ in self.network.layers]
        compiled = [index for index, op in enumerate(self.ops) if op is not None and index not in absorbed]
        for producer, consumer in itertools.pairwise(compiled):
            first, second = self.ops[producer].kernel, _in_place_reader(self.ops[consumer])
            chain = range(producer + 1, consumer + 1)  # the folded layers, then the consumer: each reads the last
            if (isinstance(first, Conv2dKernel) and second is not None and first.feeds_in_place(second)
                    and all(inputs[index] == (names[index - 1],) and last[names[index - 1]] == index
                            for index in chain)):
                first.reader = second

    def _single_cuts(self) -> set[int]:
        """The boundaries ``k`` at which one tensor crosses: the nodes from ``k`` on read only node ``k - 1``'s
        output (the input for ``k = 0``) and tensors computed from ``k`` on, so :meth:`run` can stop at ``k`` and
        resume from that one tensor."""
        last = self.network.last_uses()
        names = [INPUT, *(name for name, _ in self.network.layers)]
        # names[:index] are the input and nodes 0 .. index - 2: none may be read from node index on.
        return {index for index in self.boundaries if all(last[name] < index for name in names[:index])}

    def _flat_tail_start(self) -> int | None:
        """The first node of the network's flat tail (from its first Flatten or Linear on), if the nodes before
        it can run on their own: a boundary where only the previous node's output crosses."""
        start = next((index for index, (_, layer) in enumerate(self.network.layers[:len(self.ops)])
                      if isinstance(layer, (Flatten, Linear))), None)
        return start if start and start in self.cuts else None

    def block_plan(self, input_shape: tuple[int, ...], batch: int) -> list[tuple[int, int, int]]:
        """How a batch runs the layers before :attr:`head_stop`: ``(start, stop, images)`` segments of layers,
        each run ``images`` images at a time, ``images`` never decreasing from one segment to the next.

        A node fits ``L3 / (4 live)`` images, ``live`` being the per-image values of the tensors alive while it
        runs (:meth:`~dcnn.network.graph.Network.live_values`: a chain layer's input and output) and ``L3`` the
        share :data:`BLOCK_CACHE_SHARE` of that cache, at least one, at most ``batch``. Segments start and end
        only at :attr:`cuts`; a segment runs the fewest images that any of its nodes or any later node fits (so a
        residual block's narrow ReLU does not alternate with the wider block around it), neighbours that run as
        many images are one segment, and a segment that would start by shrinking the map (a pool) leaves that
        node to the segment before it, so the batch is gathered from the smaller tensor.

        Early layers on large maps thus run image by image, as batch 1 would (VGG-16 at batch 4 otherwise read
        every early layer's input back from memory: 15 % slower per image), and later, smaller layers on more
        images, whose longer GEMMs (Winograd's tiles of several images in one band,
        :func:`dcnn.kernels.winograd.images_per_block`) are where a batch gains. The flat tail (the fully
        connected layers, bound by reading their weights) runs on the whole batch.
        """
        stop = self.head_stop or 0
        live = self.network.live_values(input_shape)[:stop]
        fits = [max(1, min(batch, cache_bytes(3) // (BLOCK_CACHE_SHARE * 4 * values))) for values in live]
        sizes = [math.prod(shape) for shape in self.network.shapes(input_shape)]
        bounds = [0, *sorted(cut for cut in self.cuts if 0 < cut < stop), stop]
        plan: list[tuple[int, int, int]] = []
        images = batch
        for first, end in reversed(list(itertools.pairwise(bounds))):
            images = min(images, *fits[first:end])
            if plan and plan[-1][2] == images:
                end = plan.pop()[1]
            plan.append((first, end, images))
        plan.reverse()
        # The segment before a shrinking node fits it too (it runs fewer images).
        for index in range(1, len(plan)):
            (first, cut, images), (_, end, more) = plan[index - 1], plan[index]
            while cut < end and sizes[later := min(c for c in bounds if c > cut)] < sizes[cut]:
                cut = later
            plan[index - 1], plan[index] = (first, cut, images), (cut, end, more)
        return [segment for segment in plan if segment[0] < segment[1]]

    def __call__(self, x: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        """Run the whole network on a ``(B, C, H, W)`` float32 batch, the layers before its flat tail in blocks
        of images (:meth:`block_plan`); the blocks depend only on the batch and input sizes, so a batch gives the
        same result at any thread count, and agrees with :meth:`run` on the whole batch to float32 rounding.
        ``seconds``: as for :meth:`run`, summed over the blocks."""
        x = np.asarray(x, dtype=np.float32)
        if self.head_stop is None or len(x) <= 1:
            return self.run(x, seconds=seconds)
        for start, stop, block in self.block_plan(x.shape[1:], len(x)):
            if block >= len(x):
                x = self.run(x, start, stop, seconds)
                continue
            whole = None
            for first in range(0, len(x), block):
                # Copied at once: a block's output may live in a buffer that the next block reuses.
                part = self.run(x[first:first + block], start, stop, seconds)
                if whole is None:
                    whole = empty_float32((len(x), *part.shape[1:]))
                whole[first:first + len(part)] = part
            x = whole
        return self.run(x, self.head_stop, seconds=seconds)

"""An ONNX graph's nodes, one at a time, as dcnn layer steps: what each node is and why one is refused.

:class:`GraphReading` walks the nodes the graph's output needs, in order. A node is, in turn: refused if it
computes with a dynamic size marker (:mod:`dcnn.network.onnx.constants`) where only a reshape target may hold
one; a constant (initializers, ``Constant``, a ``Shape`` folded from shape inference) or a folded node of
constants; a reshape whose dynamic height and width must be its input's own; else converted by the operator's
converter (:data:`dcnn.network.onnx.ops.CONVERTERS`) into dcnn layer steps. Every refusal is collected with its
reason, so that a model is reported once with all of its unsupported nodes; the nodes that only read what a
refused node computes are not reported again. Imported when a model is read (it needs the ``onnx`` package).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnn.errors import ShapeError
from dcnn.network.layers import ChannelShuffle
from dcnn.network.onnx.constants import (
    BATCH_SIZE_OPS,
    constant_node_value,
    dynamic_size_use,
    fold_node,
    holds_map_sizes,
    shape_node_value,
)
from dcnn.network.onnx.errors import INCONSISTENT_MODEL_ERRORS, Unsupported, first_line, inconsistent
from dcnn.network.onnx.ops import CONVERTERS, REFUSED_OPS, NodeContext, Step
from dcnn.network.onnx.shapes import MAP_PROBES

__all__ = ["SIZE_ARITHMETIC", "GraphReading", "layer_output_shape", "propagate_shape"]

Shape = tuple[int | None, ...]


@dataclass
class GraphReading:
    """The state of reading one graph's nodes (:meth:`read` each needed node in order).

    Parameters
    ----------
    path : pathlib.Path
        The model file (named in errors).
    opset : int
        The default-domain opset.
    opsets : dict of str to int
        Every imported domain's opset (the constant folder needs them).
    constants : dict of str to numpy.ndarray
        Constant tensors by name: the initializers to begin with; folded values are added.
    shapes : dict of str to tuple of (int or None)
        Each tensor's shape from ONNX's shape inference (``None`` per dynamic dimension); the shapes that the
        converted layers resolve are added (:func:`propagate_shape`).
    probes : list of dict
        The shapes at each of :data:`~dcnn.network.onnx.shapes.MAP_PROBES` (empty if the model reads no shape).
    needed_tensors : set of str
        The tensors the graph output depends on.

    Attributes
    ----------
    conversions : list of (str, str or list of Step)
        Per converted node, its first output and either the tensor it is a view of or its layer steps.
    unsupported : dict of str to list of (str, str)
        Per refused operator type, each node's name and reason (for
        :class:`~dcnn.network.onnx.errors.UnsupportedModelError`).
    """

    path: Path
    opset: int
    opsets: dict[str, int]
    constants: dict[str, np.ndarray]
    shapes: dict[str, Shape]
    probes: list[dict[str, Shape]]
    needed_tensors: set[str]
    conversions: list[tuple[str, str | list[Step]]] = field(default_factory=list)
    unsupported: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: Outputs of the nodes reported unsupported.
    refused: set[str] = field(default_factory=set)
    #: Values computed from a ``Shape`` that could not be folded.
    unknown_sizes: set[str] = field(default_factory=set)
    #: The maps whose dynamic height and width a folded value holds (by their view roots).
    size_sources: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Tensors that are views of another with its height and width (a passed-through reshape, a channel shuffle).
    views: dict[str, str] = field(default_factory=dict)

    def read(self, node) -> None:
        """Take one node: refuse it, record its constant value, or convert it into layer steps.

        Raises
        ------
        InputError
            A node whose tensors contradict each other (a damaged file), naming the node.
        """
        name = node.name or node.output[0]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        refuse = functools.partial(self._refuse, node, op, name)
        sizes = {dynamic_size_use(self.constants[n]) for n in node.input if n in self.constants} - {None}
        if node.op_type not in BATCH_SIZE_OPS and sizes:
            # Before anything evaluates the node: a ConstantOfShape of a marker would allocate billions of values.
            refuse("; ".join(SIZE_ARITHMETIC[size] for size in sorted(sizes)))
            self.unknown_sizes.update(node.output)
        elif not self._evaluate(node, name, op, refuse) and not self._fold(node, refuse):
            if sizes and node.op_type != "Reshape":
                # A selection of a map by its sizes (x[:, :x.size(0)]): only a reshape's target may hold them.
                refuse(f"{sorted(sizes)[0]} as an operand of a computed tensor (dcnn reshapes by it only)")
            elif node.op_type == "Reshape" and len(node.input) > 1 and not self._keeps_map_size(node):
                refuse("a target shape with another tensor's dynamic height and width (dcnn keeps a map's own)")
            else:
                self._convert(node, name, op, refuse)

    def _refuse(self, node, op: str, name: str, reason: str) -> None:
        """Report a node as unsupported (``op``: its operator type, ``name``: its name) and mark its outputs."""
        self.unsupported.setdefault(op, []).append((name, reason))
        self.refused.update(node.output)

    def _evaluate(self, node, name: str, op: str, refuse) -> bool:
        """Record a node's value if it is a constant (``Constant``, ``ConstantOfShape``, a ``Shape`` that shape
        inference knows) or computes only from a refused ``Shape``'s sizes; whether it was one of those."""
        try:
            value = constant_node_value(node, self.constants)
        except INCONSISTENT_MODEL_ERRORS as error:
            raise inconsistent(self.path, f"node {name} ({op})", error) from None
        if value is None and node.op_type == "Shape":
            value = shape_node_value(node, self.shapes)
            if value is None:
                if node.input[0] not in self.refused:  # else the shape of a refused node's output: that node is why
                    refuse(f"the shape of {node.input[0]!r} is unknown")
                self.unknown_sizes.update(node.output)
                return True
        if value is None and _computes_sizes(node, self.constants, self.unknown_sizes):
            # Arithmetic on the sizes of a refused Shape (x.size(1) // 2 ...): that Shape is the reason.
            self.unknown_sizes.update(node.output)
            return True
        if value is None:
            return False
        self.constants[node.output[0]] = value
        if node.op_type == "Shape" and holds_map_sizes(value):
            self.size_sources[node.output[0]] = frozenset({_view_root(self.views, node.input[0])})
        return True

    def _fold(self, node, refuse) -> bool:
        """Fold a node of constants (the reference evaluator) into constants; whether it was folded or refused."""
        try:
            folded = fold_node(node, self.constants, self.opsets)
        except Exception as error:  # any failure of the reference evaluator is the node's
            refuse(f"cannot fold its constants ({first_line(error)})")
            return True
        if folded is None:
            return False
        self.constants.update(zip(node.output, folded))
        sources = frozenset().union(*(self.size_sources.get(n, frozenset()) for n in node.input))
        self.size_sources.update(
            (output, sources) for output, value in zip(node.output, folded) if sources and holds_map_sizes(value)
        )
        return True

    def _keeps_map_size(self, node) -> bool:
        """Whether a ``Reshape``'s target takes any dynamic height and width from its input's own map."""
        root = _view_root(self.views, node.input[0])
        return _same_map_size(self.probes, root, self.size_sources.get(node.input[1], frozenset()))

    def _convert(self, node, name: str, op: str, refuse) -> None:
        """Convert a computed node into layer steps (or a view of its input) by its operator's converter."""
        converter = CONVERTERS.get(op)
        if converter is None:
            refuse(REFUSED_OPS.get(op, ""))
            return
        try:
            context = NodeContext(node, name, self.opset, self.constants, self.shapes, self.needed_tensors)
            conversion = converter(context)
            self.conversions.append((node.output[0], conversion))
            if isinstance(conversion, str):
                self.views[node.output[0]] = conversion
            elif len(conversion) == 1 and isinstance(conversion[0].layer, ChannelShuffle):
                self.views[node.output[0]] = conversion[0].inputs[0]
            propagate_shape(node.output[0], conversion, context.output_shape, self.shapes)
        except (Unsupported, *INCONSISTENT_MODEL_ERRORS) as error:
            reads_refused = any(
                n in self.unknown_sizes or (n in self.refused and not _fully_known(self.shapes.get(n)))
                for n in node.input
            )
            if reads_refused:
                # It reads what a refused node computes (sizes, or a tensor of unknown shape): that node is why.
                self.refused.update(node.output)
            elif isinstance(error, Unsupported):
                refuse(error.reason)
            else:
                raise inconsistent(self.path, f"node {name} ({op})", error) from None


#: Why arithmetic on a dynamic size is refused, and what to export instead.
SIZE_ARITHMETIC = {
    "the batch size": "arithmetic on the batch size (dcnn runs any batch: view as x.view(x.size(0), -1))",
    "a dynamic height or width": "arithmetic on a dynamic height or width (export with a fixed input size)",
}


def _same_map_size(probes, tensor: str, sources: frozenset[str]) -> bool:
    """Whether each of ``sources`` has the height and width of ``tensor`` at every input size (it is
    ``tensor``, or both have the same known sizes at each of the probed input sizes,
    :func:`~dcnn.network.onnx.shapes.probed_shapes`)."""
    for source in sources - {tensor}:
        sizes = [(probe.get(tensor, ())[-2:], probe.get(source, ())[-2:]) for probe in probes]
        if not sizes or any(len(a) != 2 or a != b or None in a for a, b in sizes):
            return False
    return True


def _view_root(views: Mapping[str, str], tensor: str) -> str:
    """The tensor whose height and width ``tensor`` has by being a view of it (itself if it is no view)."""
    while tensor in views:
        tensor = views[tensor]
    return tensor


def _computes_sizes(node, constants, unknown_sizes: set[str]) -> bool:
    """Whether a node computes only from constants and sizes of a refused ``Shape`` (at least one)."""
    names = [name for name in node.input if name]
    return any(name in unknown_sizes for name in names) and all(
        name in unknown_sizes or name in constants for name in names
    )


def _fully_known(shape: tuple[int | None, ...] | None) -> bool:
    """Whether a tensor's shape is known but for its batch."""
    return bool(shape) and None not in shape[1:]  # type: ignore[index]


def _knows_more(shape: tuple[int | None, ...], than: tuple[int | None, ...] | None) -> bool:
    """Whether ``shape`` knows more dimensions than ``than`` (``None``: an unknown shape)."""
    return than is None or sum(d is None for d in than) > sum(d is None for d in shape)


def propagate_shape(output: str, conversion, resolved, shapes: dict[str, tuple[int | None, ...]]) -> None:
    """Record the shape of each tensor a converted node computes where ONNX's shape inference left it (or a size
    of each image) unknown.

    Shape inference runs before the constants are folded, so it cannot follow a ``Reshape`` whose target is
    computed (``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], -1)``): the node after it would find its input's
    shape unknown. The shape the converter resolved (``resolved``: a reshape's target, a passed-through view's)
    or the dcnn layers the node became (:meth:`Layer.output_shape` of each image, the batch of the first input)
    give it; a shape that stays unknown (a dynamic height or width) is left out.
    """
    if resolved is not None and _knows_more(tuple(resolved), shapes.get(output)):
        shapes[output] = tuple(resolved)
    if isinstance(conversion, str):
        return
    known = dict(shapes)
    for step in conversion:
        inputs = [known.get(source) for source in step.inputs]
        if any(shape is None or not shape for shape in inputs):
            return
        per_image = layer_output_shape(step.layer, [tuple(shape[1:]) for shape in inputs])
        if per_image is None:
            return  # the network's own shape check reports it
        produced = step.output or output
        known[produced] = (inputs[0][0], *per_image)
        if _knows_more(known[produced], shapes.get(produced)):
            shapes[produced] = known[produced]


def layer_output_shape(layer, shapes: list[tuple[int | None, ...]]) -> tuple[int | None, ...] | None:
    """A layer's per-image output shape for per-image input shapes with ``None`` for a dynamic size: the
    dimensions that do not depend on it, ``None`` for those that do; ``None`` if the layer refuses the shapes.
    The dynamic sizes are tried at each of :data:`MAP_PROBES` (the last axis at its width, the others at its
    height): a size the output keeps across both is fixed (a global pool's 1), one that differs is dynamic."""
    outputs = []
    for height, width in MAP_PROBES:
        sized = [
            tuple(d if d is not None else width if i == len(s) - 1 else height for i, d in enumerate(s)) for s in shapes
        ]
        try:
            outputs.append(layer.output_shape(*sized))
        except (ShapeError, *INCONSISTENT_MODEL_ERRORS):
            return None
        if not any(None in shape for shape in shapes):
            return outputs[0]
    return tuple(a if a == b else None for a, b in zip(*outputs))

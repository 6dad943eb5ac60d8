"""Bring your own model: ONNX files read into dcnn networks (:func:`load_onnx`).

Modules: :mod:`~dcnn.network.onnx.reader` (the file, its checks, the network), :mod:`~dcnn.network.onnx.shapes`
(shape inference at the declared and probe input sizes), :mod:`~dcnn.network.onnx.nodes` (the graph's nodes one
at a time: constants, refusals, conversions), :mod:`~dcnn.network.onnx.ops` (one converter per operator),
:mod:`~dcnn.network.onnx.constants` (weights, folded constants, dynamic-size markers),
:mod:`~dcnn.network.onnx.errors` (the unsupported-operator error, inconsistent models). Only the reader's
functions need the ``onnx`` package, imported when a model is read.
"""

from dcnn.network.onnx.errors import UnsupportedModelError
from dcnn.network.onnx.reader import DYNAMIC_SIZE, MIN_OPSET, OnnxModel, is_onnx_path, load_onnx, max_opset

__all__ = ["DYNAMIC_SIZE", "MIN_OPSET", "OnnxModel", "UnsupportedModelError", "is_onnx_path", "load_onnx", "max_opset"]

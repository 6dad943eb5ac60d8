"""The error an ONNX model with operators or attributes dcnn cannot run raises: every such node, at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dcnn.errors import InputError

__all__ = ["Unsupported", "UnsupportedModelError"]


class Unsupported(Exception):
    """Raised by an operator converter for a node dcnn cannot run (internal; the reader collects them).

    Parameters
    ----------
    reason : str
        What is unsupported, e.g. ``"auto_pad SAME_UPPER with a dynamic input size"``; empty for an operator
        type dcnn does not know at all.
    """

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class UnsupportedModelError(InputError):
    """An ONNX model with operators or attributes dcnn cannot run, listing every one with its nodes.

    Parameters
    ----------
    path : str
        The model file, named first in the message.
    nodes : mapping of str to sequence of (str, str)
        Per operator type, in order of first appearance, the ``(node name, reason)`` of each unsupported node;
        the reason is empty for an operator type dcnn does not know.

    Attributes
    ----------
    nodes : dict of str to list of (str, str)
        As given.

    Examples
    --------
    >>> print(UnsupportedModelError("m.onnx", {"Floor": [("f1", ""), ("f2", "")],
    ...                                        "Pad": [("p", "mode reflect")]}))
    m.onnx: unsupported ONNX operators: Floor (nodes f1, f2); Pad (node p: mode reflect)
    """

    def __init__(self, path: str, nodes: Mapping[str, Sequence[tuple[str, str]]]):
        self.nodes = {op: list(entries) for op, entries in nodes.items()}
        parts = []
        for op, entries in self.nodes.items():
            described = ", ".join(f"{name}: {reason}" if reason else name for name, reason in entries)
            parts.append(f"{op} ({'node' if len(entries) == 1 else 'nodes'} {described})")
        super().__init__(f"{path}: unsupported ONNX operators: {'; '.join(parts)}")

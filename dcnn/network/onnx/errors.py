"""The error an ONNX model with operators or attributes dcnn cannot run raises: every such node, at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dcnn.errors import InputError

__all__ = ["INCONSISTENT_MODEL_ERRORS", "Unsupported", "UnsupportedModelError", "first_line", "inconsistent"]

#: What numpy and the layer specs raise on a model that passes the checker but whose tensors contradict each
#: other (a damaged or hand-edited file): reported as an invalid model, naming the node.
INCONSISTENT_MODEL_ERRORS = (ValueError, IndexError, KeyError, TypeError, ArithmeticError)


def inconsistent(path: Path, where: str, error: BaseException) -> InputError:
    """The one-line error for a model whose tensors contradict each other at ``where`` (a node, the graph)."""
    return InputError(f"{path}: invalid ONNX model ({where}: {type(error).__name__}: {first_line(error)})")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
        the reason is empty for an operator type dcnn does not know. The message names the nodes of one
        operator and reason together, the first :data:`LISTED_NODES` of them, and counts the others.

    Attributes
    ----------
    nodes : dict of str to list of (str, str)
        As given.

    Examples
    --------
    >>> print(UnsupportedModelError("m.onnx", {"Floor": [("f1", ""), ("f2", "")],
    ...                                        "Pad": [("p", "mode reflect")]}))
    m.onnx: unsupported ONNX operators: Floor (nodes f1, f2); Pad (node p: mode reflect)
    >>> print(UnsupportedModelError("m.onnx", {"Slice": [(f"s{i}", "why") for i in range(6)]}))
    m.onnx: unsupported ONNX operators: Slice (nodes s0, s1, s2, s3 and 2 more: why)
    """

    def __init__(self, path: str, nodes: Mapping[str, Sequence[tuple[str, str]]]):
        self.nodes = {op: list(entries) for op, entries in nodes.items()}
        parts = []
        for op, entries in self.nodes.items():
            by_reason: dict[str, list[str]] = {}
            for name, reason in entries:
                by_reason.setdefault(reason, []).append(name)
            described = ", ".join(
                f"{_some(names)}: {reason}" if reason else _some(names) for reason, names in by_reason.items()
            )
            parts.append(f"{op} ({'node' if len(entries) == 1 else 'nodes'} {described})")
        super().__init__(f"{path}: unsupported ONNX operators: {'; '.join(parts)}")


#: How many node names of one operator and reason the message lists before it counts the rest.
LISTED_NODES = 4


def _some(names: Sequence[str]) -> str:
    """``a, b, c, d and 5 more``: the first :data:`LISTED_NODES` names, then how many others."""
    listed = ", ".join(names[:LISTED_NODES])
    return listed if len(names) <= LISTED_NODES else f"{listed} and {len(names) - LISTED_NODES} more"

"""dcnn: distributed convolutional neural network inference on resource-constrained clusters.

The public API runs a model on one process and plans a cluster run; the parallel engines and the commands
live in :mod:`dcnn.parallel` and :mod:`dcnn.cli` (see docs/architecture.md for the layers). Importing
``dcnn`` imports none of them: each public name loads its module on first use.

- :func:`get_model` — a zoo model (:class:`~dcnn.network.graph.Network`: layer specs, shapes, costs) by name;
- :func:`load_weights` — a validated ``.npz``/HDF5 weights file keyed by PyTorch ``state_dict`` names;
- :class:`Forward` — a network with its weights, run on ``(B, C, H, W)`` float32 batches on one process;
- :class:`FaceDetector` — dlib's MMOD face detector, images in, detections out;
- :func:`choose_plan` — the mode, grid and batch with the least predicted time that fits a cluster's memory.

Examples
--------
>>> import numpy as np
>>> from dcnn import Forward, choose_plan, get_model
>>> from dcnn.network.weights import init_weights
>>> network = get_model("lenet5")
>>> network.output_shape()
(10,)
>>> forward = Forward(network, init_weights(network, seed=0))
>>> forward(np.zeros((2, *network.input_shape), np.float32)).shape
(2, 10)
>>> from dcnn.planner.plan import Cluster
>>> plan = choose_plan(network, network.input_shape, Cluster.uniform(2, 2**30), batch=4)
>>> plan.overflow(Cluster.uniform(2, 2**30)) is None
True
"""

__version__ = "0.1.0"

import importlib

#: Each public name and the module that defines it, imported on first use (PEP 562): ``import dcnn`` itself
#: loads nothing heavy, so a command can take over Ctrl-C before numpy, SciPy and mpi4py load.
_PUBLIC = {
    "FaceDetector": "dcnn.faces.detect",
    "Forward": "dcnn.exec.forward",
    "choose_plan": "dcnn.planner.plan",
    "get_model": "dcnn.network.zoo",
    "load_weights": "dcnn.network.weights",
}

__all__ = ["FaceDetector", "Forward", "__version__", "choose_plan", "get_model", "load_weights"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})

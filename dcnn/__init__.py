"""dcnn: distributed convolutional neural network inference on resource-constrained clusters.

The package is layered so that only the communication modules import mpi4py:

- :mod:`dcnn.kernels` — pure numpy/scipy numerics (convolution on BLAS GEMM, pooling, activations);
- :mod:`dcnn.network.layers`, :mod:`dcnn.network.graph`, :mod:`dcnn.network.zoo` — layer specifications, shape inference and the
  per-layer cost model (parameters, bytes, MACs), and the model zoo;
- :mod:`dcnn.network.weights` — seeded initialisation, ``.npz``/HDF5 weight files keyed by PyTorch names;
- :mod:`dcnn.exec.forward` — the single-process executor every engine builds on;
- :mod:`dcnn.cli.infer`, :mod:`dcnn.cli.model` — the command-line entry points.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""The MPI layer, the only subpackage that imports mpi4py: communicators, work stealing, the overlap pool,
the spatial and fused engines and the batch task loop."""

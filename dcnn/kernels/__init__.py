"""Pure numpy/scipy numerics: convolution on BLAS GEMM, pooling, element-wise layers, BLAS and thread control."""

"""Pure decomposition plans (no MPI): block geometry, the spatial plan, the fused tiling, the reuse plan
and the initial task intervals of work stealing."""

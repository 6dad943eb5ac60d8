"""The memory and time model that chooses a mode, grid and batch for a cluster (pure, no MPI)."""

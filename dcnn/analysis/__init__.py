"""Serial tools on result files: tables, figures and the work-stealing simulator (no MPI)."""

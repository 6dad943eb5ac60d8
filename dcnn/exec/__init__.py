"""Single-process execution: the forward executor every engine builds on, and the per-image workloads."""

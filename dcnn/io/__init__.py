"""Input and output: image sets, HDF5 result files, TOML configuration and sweeps, progress lines."""

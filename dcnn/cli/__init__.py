"""The command-line layer: shared argument and exit handling and one module per command."""

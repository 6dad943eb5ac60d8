"""Support for fuzzing the readers (used by tests and scripts)."""

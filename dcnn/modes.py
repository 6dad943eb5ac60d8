"""The execution modes of a run, named once for the command, the planner and the task loop.

``single``: one process runs every image. ``batch``: each rank runs whole chunks of images, balanced by work
stealing. ``spatial``: every image is split into blocks over a grid of ranks. ``fused``: every image's first
layers run as stolen tiles, the rest in spatial mode.
"""

__all__ = ["MODES", "PLANNED_MODES", "SPLITTING_MODES"]

MODES = ("single", "batch", "spatial", "fused")
#: The modes the planner compares on a cluster (``single`` is batch mode on one rank).
PLANNED_MODES = ("batch", "spatial", "fused")
#: The modes that split one image over all the ranks (the others give each rank whole images).
SPLITTING_MODES = ("spatial", "fused")

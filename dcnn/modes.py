"""The execution modes of a run, named once for the command, the planner and the task loop.

``single``: one process runs every image. ``batch``: each rank runs whole chunks of images, balanced by work
stealing. ``spatial``: every image is split into blocks over a grid of ranks. ``fused``: every image's first
layers run as stolen tiles, the rest in spatial mode.
"""

__all__ = ["MODES", "PLANNED_MODES", "SPLITTING_MODES", "concurrent_tasks"]

MODES = ("single", "batch", "spatial", "fused")
#: The modes the planner compares on a cluster (``single`` is batch mode on one rank).
PLANNED_MODES = ("batch", "spatial", "fused")
#: The modes that split one image over all the ranks (the others give each rank whole images).
SPLITTING_MODES = ("spatial", "fused")


def concurrent_tasks(mode: str, threads: int, tasks: int, ranks: int) -> int:
    """Tasks a rank of ``threads`` kernel threads runs at once: in batch mode with at least ``threads`` of the
    run's ``tasks`` per rank (over ``ranks`` ranks), one per thread (:func:`dcnn.parallel.batch.run_tasks`);
    otherwise one, whose layers its threads share. The planner counts each one's batch
    (:func:`dcnn.planner.plan.plan_for`), for ``python -m dcnn.infer`` and ``python -m dcnn.plan`` alike."""
    return threads if mode == "batch" and threads > 1 and tasks >= threads * ranks else 1

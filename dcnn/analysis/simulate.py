"""A discrete-event simulation of batch mode on P nodes: the paper's table for clusters this machine does not have.

The model (all pure Python, seeded):

- A run is ``ceil(images / batch)`` tasks. A task of ``b`` images takes ``b * seconds_per_image / speed`` on a
  node, times a log-normal jitter (coefficient of variation ``jitter``, as measured between tasks here).
- Scheduling is dcnn's: each node starts with its contiguous share of the tasks (``intervals.initial_intervals``) and
  pops from its head; an idle node tries random victims, each try costing a round trip (two network latencies),
  and takes the upper half of the victim's remaining interval. ``policy="static"`` keeps the initial split (the
  paper's cluster had no load balancer).
- A node of ``threads`` task threads runs ``concurrent_tasks("batch", threads, tasks, nodes)`` tasks at once, as
  ``python -m dcnn.infer --threads`` does (:func:`dcnn.modes.concurrent_tasks`): each of its slots pops from the
  node's interval, and since the calibration measures a node's throughput, a task on one of ``k`` slots takes
  ``k`` times as long (the slots share the node; their work ends in larger pieces, so the tail is longer).
- Each finished task sends its results to rank 0 (latency plus bytes over the bandwidth), overlapped with the
  next task. A fixed ``startup`` (process launch, imports, model load) is added to the makespan.
- Per-node memory is the planner's batch-mode prediction (:mod:`dcnn.planner.plan`).

``calibrate`` fits ``startup`` and ``seconds_per_image`` to measured (nodes, images, seconds) points by least
squares on ``t = startup + images * seconds_per_image / nodes``; the paper's 3-node column calibrates a
RockPro64, and dcnn's own np=1 runs calibrate this machine.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dcnn.decomposition.intervals import initial_intervals
from dcnn.errors import InputError
from dcnn.modes import concurrent_tasks

__all__ = ["PAPER_TABLE", "Machine", "calibrate", "simulate"]

#: The paper's run times in seconds: {images: {nodes: seconds}} (128x128 faces, dlib's MMOD, RockPro64 nodes).
PAPER_TABLE = {
    100: {3: 36, 6: 19, 9: 15, 12: 12, 15: 11, 18: 10, 20: 9},
    1000: {3: 328, 6: 166, 9: 116, 12: 91, 15: 77, 18: 63, 20: 56},
    5000: {3: 1639, 6: 825, 9: 571, 12: 439, 15: 355, 18: 301, 20: 271},
    10000: {3: 3240, 6: 1643, 9: 1138, 12: 873, 15: 707, 18: 597, 20: 542},
    50000: {5: 9840, 10: 4972, 15: 3791, 20: 2959},
}


#: An idle rank's back-off between steal attempts, first and largest (seconds), as in :mod:`dcnn.parallel.steal`.
BACKOFF = (1e-4, 5e-3)


@dataclass(frozen=True)
class Machine:
    """What one node of the simulated cluster does.

    Attributes
    ----------
    seconds_per_image : float
        Compute time of one image on a node of speed 1.
    startup : float
        Seconds before the first task (launch, imports, model load).
    jitter : float
        Coefficient of variation of task durations.
    latency : float
        Seconds per network message (default 50 us, Gigabit Ethernet).
    bandwidth : float
        Network bytes per second (default 1 Gbit/s).
    result_bytes : int
        Bytes of results sent to rank 0 per image.
    serial_seconds_per_image : float
        Work per image that nothing overlaps (Amdahl's serial part), e.g. a master that handles every image in
        turn; 0 for dcnn, whose rank 0 writes results between its own tasks.
    """

    seconds_per_image: float
    startup: float = 0.0
    jitter: float = 0.05
    latency: float = 50e-6
    bandwidth: float = 125e6
    result_bytes: int = 256
    serial_seconds_per_image: float = 0.0


def calibrate(points: Sequence[tuple[int, int, float]], serial: bool = False) -> tuple[float, float, float]:
    """``(startup, seconds_per_image, serial_seconds_per_image)`` fitted to ``(nodes, images, seconds)`` points.

    Least relative squares on ``t = startup + images * (seconds_per_image / nodes + serial)``; ``serial`` is fitted only
    when asked (it needs points at several node counts) and is 0 otherwise.
    """
    if len(points) < 2 + serial:
        raise InputError(f"calibration needs at least {2 + serial} (nodes, images, seconds) points")
    if serial and len({nodes for nodes, _, _ in points}) < 2:
        raise InputError("fitting a serial part needs runs at two or more node counts")
    design = np.array([[1.0, images / nodes] + ([float(images)] if serial else []) for nodes, images, _ in points])
    seconds = np.array([value for _, _, value in points])
    # Relative errors: every run counts alike, whatever its length.
    solution, *_ = np.linalg.lstsq(design / seconds[:, None], np.ones_like(seconds), rcond=None)
    startup, per_image = float(solution[0]), float(solution[1])
    if per_image <= 0:
        raise InputError("the calibration points do not grow with the images per node")
    return max(0.0, startup), per_image, max(0.0, float(solution[2])) if serial else 0.0


def simulate(machine: Machine, nodes: int, images: int, batch: int = 4, speeds: Sequence[float] | None = None,
             policy: str = "steal", seed: int = 0, threads: int = 1) -> dict[str, float]:
    """Simulated makespan of ``images`` images on ``nodes`` nodes, with per-node task counts and steal counts.

    ``threads``: each node's threads (``--threads``); in batch mode they run several tasks at once when the run
    leaves each node enough (:func:`dcnn.modes.concurrent_tasks`, reported as ``tasks_at_once``), each task of
    ``k`` at once taking ``k`` times its time alone (see the module's model).
    """
    if nodes < 1 or images < 1 or batch < 1 or threads < 1:
        raise InputError("nodes, images, batch and threads must be at least 1")
    speeds = list(speeds or [1.0] * nodes)
    rng = random.Random(seed)
    sigma = math.sqrt(math.log(1 + machine.jitter**2))
    tasks = math.ceil(images / batch)
    sizes = [min(batch, images - task * batch) for task in range(tasks)]
    durations = [size * machine.seconds_per_image * rng.lognormvariate(-sigma**2 / 2, sigma) for size in sizes]
    intervals = [list(interval) for interval in initial_intervals(tasks, [1.0] * nodes)]
    round_trip = 2 * machine.latency
    at_once = concurrent_tasks("batch", threads, tasks, nodes)
    events = [(0.0, node) for node in range(nodes) for _ in range(at_once)]  # (time a slot of the node is free, node)
    heapq.heapify(events)
    finished, last, steals = 0, 0.0, 0
    ran = [0] * nodes
    backoff = [BACKOFF[0]] * nodes
    while finished < tasks:
        now, node = heapq.heappop(events)
        head, tail = intervals[node]
        if head < tail:
            intervals[node][0] += 1
            end = now + durations[head] * at_once / speeds[node] + round_trip  # pop, then send results to rank 0
            end += sizes[head] * machine.result_bytes / machine.bandwidth
            ran[node] += 1
            finished += 1
            last = max(last, end)
            heapq.heappush(events, (end, node))
            continue
        if policy != "steal" or nodes == 1:
            continue  # idle for good
        victim = rng.randrange(nodes - 1)
        victim += victim >= node
        v_head, v_tail = intervals[victim]
        if v_tail - v_head >= 1:
            count = (v_tail - v_head + 1) // 2
            intervals[victim][1] -= count
            intervals[node] = [v_tail - count, v_tail]
            steals += 1
            backoff[node] = BACKOFF[0]
            heapq.heappush(events, (now + 2 * round_trip, node))  # read and swap the victim's word, publish
        else:
            heapq.heappush(events, (now + round_trip + backoff[node], node))
            backoff[node] = min(2 * backoff[node], BACKOFF[1])
    serial = images * machine.serial_seconds_per_image
    return {"seconds": machine.startup + last + serial, "steals": steals, "max_tasks": max(ran),
            "min_tasks": min(ran), "tasks_at_once": at_once}


def paper_comparison(machine: Machine, batch: int, policy: str, seed: int = 0, threads: int = 1) -> list[dict]:
    """The simulated table (nodes of ``threads`` threads, see :func:`simulate`) next to the paper's, with the
    relative error of every cell."""
    rows = []
    for images, row in PAPER_TABLE.items():
        for nodes, paper in row.items():
            simulated = simulate(machine, nodes, images, batch, policy=policy, seed=seed, threads=threads)["seconds"]
            rows.append({"images": images, "nodes": nodes, "paper_seconds": paper, "simulated_seconds": simulated,
                         "error": (simulated - paper) / paper})
    return rows


def format_comparison(rows: list[dict]) -> str:
    """Markdown: per image count, ``simulated / paper`` seconds per node count."""
    nodes = sorted({row["nodes"] for row in rows})
    lines = ["| images | " + " | ".join(f"{n} nodes" for n in nodes) + " |", "|---|" + "---|" * len(nodes)]
    for images in dict.fromkeys(row["images"] for row in rows):
        cells = {row["nodes"]: f"{row['simulated_seconds']:.0f} / {row['paper_seconds']}" for row in rows
                 if row["images"] == images}
        lines.append(f"| {images} | " + " | ".join(cells.get(n, "—") for n in nodes) + " |")
    errors = np.abs([row["error"] for row in rows])
    lines.append("")
    lines.append(f"simulated / paper seconds; mean absolute error {errors.mean():.1%}, largest {errors.max():.1%}")
    return "\n".join(lines)

"""PNG figures of result files (matplotlib, headless): the paper's Fig. 5 and Fig. 6, and a per-rank timeline.

matplotlib comes with the ``[plots]`` extra; it is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcnn.analysis.analyze import count_of
from dcnn.decomposition.intervals import initial_intervals
from dcnn.errors import InputError
from dcnn.io.results import open_result

__all__ = ["draw_memory", "memory_group_label", "draw_single_vs_cluster", "draw_timeline", "stolen_tasks"]


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise InputError("figures need matplotlib: pip install -e '.[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stolen_tasks(task_rank: np.ndarray, ranks: int, capacities: Sequence[float] | None = None) -> np.ndarray:
    """Which tasks ran on another rank than the one whose initial interval held them (a one-run batch file)."""
    owner = np.empty(len(task_rank), int)
    for rank, (start, stop) in enumerate(initial_intervals(len(task_rank), capacities or [1.0] * ranks)):
        owner[start:stop] = rank
    return (task_rank >= 0) & (task_rank != owner)


def draw_timeline(path: str, png: str) -> dict[str, int]:
    """A Gantt chart of one batch run: a bar per task on its rank's row, stolen tasks hatched and in orange."""
    plt = _pyplot()
    with open_result(path) as handle:
        start, end = handle["timing/task_start"][()], handle["timing/task_end"][()]
        task_rank = handle["timing/task_rank"][()]
        ranks, runs = int(handle.attrs["ranks"]), int(handle.attrs.get("runs", 1))
        capacity = str(handle.attrs.get("capacity", "equal"))
        model, mode = str(handle.attrs["model"]), str(handle.attrs["mode"])
    capacities = None if capacity == "equal" else [float(v) for v in capacity.split(",")]
    stolen = stolen_tasks(task_rank, ranks, capacities) if mode == "batch" and runs == 1 else np.zeros_like(
        task_rank, bool)
    figure, axes = plt.subplots(figsize=(10, 1 + 0.5 * ranks))
    for rank in range(ranks):
        for kind, color in ((False, "tab:blue"), (True, "tab:orange")):
            chosen = (task_rank == rank) & (stolen == kind)
            spans = [(s, e - s) for s, e in zip(start[chosen], end[chosen], strict=True)]
            axes.broken_barh(spans, (rank - 0.4, 0.8), facecolors=color, edgecolor="white", linewidth=0.3,
                             hatch="//" if kind else None)
    axes.set_yticks(range(ranks), [f"rank {r}" for r in range(ranks)])
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the run started")
    axes.set_title(f"{model}, {mode} mode: tasks per rank ({int(stolen.sum())} stolen, hatched)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return {"tasks": int((task_rank >= 0).sum()), "stolen": int(stolen.sum())}


def draw_memory(runs: Sequence, png: str) -> None:
    """Fig. 5: peak memory of each rank, grouped by model and rank count (bars), with the planner's prediction."""
    plt = _pyplot()
    runs = sorted(runs, key=lambda r: (r.model, r.mode, r.ranks, r.describe(), r.path))
    figure, axes = plt.subplots(figsize=(max(6, 0.9 * sum(r.ranks for r in runs)), 4))
    position, ticks, labels = 0.0, [], []
    for run in runs:
        xs = position + np.arange(run.ranks)
        axes.bar(xs, run.peak_rss / 2**20, width=0.8, color="tab:blue",
                 label="measured" if position == 0 else None)
        if (run.predicted_peak > 0).all():
            axes.scatter(xs, run.predicted_peak / 2**20, marker="_", s=300, color="tab:red",
                         label="planner" if position == 0 else None)
        ticks.append(xs.mean())
        labels.append(memory_group_label(run))
        position = xs[-1] + 2
    axes.set_xticks(ticks, labels, fontsize=8)
    axes.set_ylabel("peak RSS per rank (MiB)")
    axes.set_title("Peak memory per rank (the paper's Fig. 5)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


def memory_group_label(run) -> str:
    """The label of one run's group of bars: model, plan (mode and options), rank count and file, so that two
    runs of the same model, mode and rank count stay apart."""
    return f"{run.model}, {count_of(run.ranks, 'rank')}\n{run.describe()}\n{Path(run.path).stem}"


def draw_single_vs_cluster(rows: Sequence[dict], png: str) -> None:
    """Fig. 6: wall time of one rank against the most ranks, per image count (rows of ``paper_table``)."""
    plt = _pyplot()
    counts = sorted({row["images"] for row in rows})
    single = [min((r for r in rows if r["images"] == n), key=lambda r: r["ranks"]) for n in counts]
    cluster = [max((r for r in rows if r["images"] == n), key=lambda r: r["ranks"]) for n in counts]
    figure, axes = plt.subplots(figsize=(6, 4))
    xs = np.arange(len(counts))
    axes.bar(xs - 0.2, [r["seconds"] for r in single], width=0.4, label=count_of(single[0]["ranks"], "rank"))
    axes.bar(xs + 0.2, [r["seconds"] for r in cluster], width=0.4, label=count_of(cluster[0]["ranks"], "rank"))
    axes.set_xticks(xs, [str(n) for n in counts])
    axes.set_xlabel("images")
    axes.set_ylabel("wall time (s)")
    axes.set_title("Single process against the cluster (the paper's Fig. 6)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)

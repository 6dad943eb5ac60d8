"""The planner: per-node memory and compute for every execution mode, and the choice of a feasible plan.

The paper's constraints (SUMMARY.md, eqs. 1-3) say that each node may use a fraction ``alpha`` (0.8) of its RAM
for parameters and data, and that its share of the multiply-accumulates should follow its speed. The planner
models, per rank (one rank per node):

- ``runtime``: the interpreter, NumPy/SciPy/h5py/mpi4py and the MPI library (measured, see RUNTIME_BYTES);
- ``weights``: the layers' M_l, all of them in batch mode; with fully connected layers split by neurons over the
  ranks in spatial and fused mode (convolution weights count twice: as loaded and in the kernel's layout, which
  for Winograd's layers is the transformed filters, four times the 3x3 ones, unless ``--exact-conv``);
- ``input``: the batch of network inputs (with its preprocessing copy), present on every rank; in batch mode
  one per task a rank runs at once (one per task thread, ``Cluster.task_threads``, when the run has enough tasks
  for them: :func:`dcnn.modes.concurrent_tasks` of the plan's batch), as for ``activations`` and a stage's
  activations;
- ``activations``: the largest working set of one node (input region, output, and the convolution's padded
  scratch copy and GEMM output, plus the tensors alive meanwhile along the topological order: an add's other
  input, a residual skip that a later node reads), for the whole map (batch), the rank's block with its halo
  (spatial) or the largest tile region (fused);
- ``gathered map``, ``tile outputs``: the maps that spatial and fused mode assemble on every rank;
- ``strip pool``: the strips a rank holds for the reuse policy;
- ``winograd scratch``: the band buffers of Winograd's convolutions, which every kernel thread keeps at the size
  of the largest band it ran (:func:`dcnn.kernels.winograd.scratch_bytes`), for ``Cluster.threads``;
- ``chunk scratch``: the GEMM chunk buffers of the convolutions, sized by the L2 (:func:`_chunk_scratch`), per
  kernel thread;
- a :class:`Stage` that every rank runs after the network (face recognition after the detector):
  ``<stage> models`` (its network's weights, counted as ``weights`` in batch mode, and its other models) and
  ``<stage> activations`` (its network's input and largest working set for one pass, its other scratch, and
  what it holds per image of the planned network's pass). They add to the network's items: what the network
  freed is not always handed back to the system by the time the stage runs.

Time is the multiply-accumulates of the slowest share over the node's speed (calibrated on the paper's RockPro64
runs), plus halo, strip and gather bytes over the network bandwidth with a latency per message. It is a simple
model: good enough to rank plans and to refuse infeasible ones before any work starts. Its memory figure is
compared with the measured peak RSS in every result file (``python -m dcnn.analyze``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from dcnn.decomposition.fused import finest_grid, plan_fused, spatial_depth
from dcnn.decomposition.reuse import plan_reuse
from dcnn.decomposition.spatial import fc_shards, gather_index, plan_spatial
from dcnn.errors import InputError, PlanError
from dcnn.io.config import read_toml
from dcnn.io.numbers import check_number
from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.conv import WIDE_CHUNK_L2, choose_method, layout_bytes, set_exact
from dcnn.kernels.winograd import TILE, scratch_bytes
from dcnn.modes import PLANNED_MODES as MODES
from dcnn.modes import concurrent_tasks
from dcnn.network.graph import BYTES_PER_VALUE, LayerCost, Network, format_shape
from dcnn.network.layers import Conv2d, Linear, Shape

__all__ = [
    "DEFAULT_MACS_PER_SECOND", "MODES", "RUNTIME_BYTES", "Cluster", "Node", "RunPlan", "Stage", "best_plan",
    "choose_plan", "exact_conv_hint", "for_process", "format_bytes", "nodes_that_fit", "parse_bytes", "plan_for",
    "plan_shapes", "plans", "worst_shapes",
]

MIB, GIB = 2**20, 2**30
#: Resident memory of one rank before any model is built: Python with NumPy, SciPy, h5py and mpi4py imported and
#: MPICH initialised, measured on x86-64 Linux (86 MiB) with a margin.
RUNTIME_BYTES = 100 * MIB
#: Share added to every prediction: measured peaks were up to 7 % above the bare model (vgg16 spatial 1x2 batch 4,
#: vgg11 fused 7x7 reuse batch 8) and well below it elsewhere (results/README.md); with 10 % no measured run has
#: exceeded its prediction (results/bench_sizes.txt).
MODEL_MARGIN = 0.10
#: The most nodes a cluster file may list.
MAX_CLUSTER_NODES = 100_000
#: The largest cluster the planner considers when it suggests more nodes.
MAX_NODES = 256
#: Multiply-accumulates per second of a node of speed 1: a RockPro64 as the paper measured it (see Cluster).
DEFAULT_MACS_PER_SECOND = 0.25e9
_UNITS = {"b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": MIB, "mib": MIB, "mb": 10**6,
          "g": GIB, "gib": GIB, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_bytes(text: str | int | float) -> int:
    """``"3.2GiB"``, ``"512MiB"``, ``"4G"`` (binary), ``"4GB"`` (decimal), ``"1000B"``.

    Raises
    ------
    InputError
        If ``text`` is not a size, has no unit (``"200"``, or the number ``200`` of a cluster file: MiB or bytes?
        the user must say), or is zero, infinite (``1e999``, 400 digits) or NaN.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        raise InputError(f"memory size {text!r} has no unit; write for example \"{text}MiB\" or \"{text}GiB\" (text, "
                         f"with its unit)")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if match and not match.group(2):
        raise InputError(f"memory size {text.strip()!r} has no unit; write for example {text.strip()}MiB or "
                         f"{text.strip()}GiB")
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read {text!r} as a memory size; use for example 512MiB, 3.2GiB or 4G")
    return int(check_number(float(match.group(1)) * _UNITS[match.group(2).lower()], f"memory size {text!r}",
                            minimum=1))


def format_bytes(count: float) -> str:
    """Bytes in GiB, MiB or KiB, one decimal (bytes below 1 KiB): ``1.5 GiB``, ``0.5 MiB``, ``1.0 KiB``, ``12 B``;
    beyond a million GiB in powers of ten (``3.2e+55 GiB``: ``--upsample 100`` printed 56 digits)."""
    if abs(count) >= GIB:
        return f"{count / GIB:.1f} GiB" if abs(count) < 1e6 * GIB else f"{count / GIB:.1e} GiB"
    if abs(count) >= MIB // 10:
        return f"{count / MIB:.1f} MiB"
    return f"{count / 1024:.1f} KiB" if abs(count) >= 1024 else f"{count:.0f} B"


@dataclass(frozen=True)
class Node:
    """One cluster node (one rank): its name, RAM in bytes and speed relative to the cluster's reference node."""

    name: str
    ram: int
    speed: float = 1.0


@dataclass(frozen=True)
class Cluster:
    """The nodes and the cost model's constants.

    Attributes
    ----------
    nodes : tuple of Node
        One rank per node.
    fraction : float
        Share of each node's RAM for parameters and data (the paper's alpha, 0.8).
    macs_per_second : float
        Multiply-accumulates per second of a node of speed 1. The default, 0.25 G, is a RockPro64 as the paper
        measured it: 0.975 s per 128x128 image of dlib's detector (0.245 GMAC), fitted by ``python -m
        dcnn.simulate``. dcnn itself reached 16 G per core of this machine (15.1 ms per image); set ``gmacs`` in
        a cluster file for your nodes.
    bandwidth : float
        Network bytes per second (1 Gbit/s Ethernet by default).
    latency : float
        Seconds per message.
    runtime_bytes : int
        Resident memory of a rank before any model is built.
    threads : int
        Kernel threads per rank (``--threads``): each holds its own Winograd band buffers.
    task_threads : int
        Task threads of a rank in batch mode: its kernel threads, or 1 for a run in single mode (one process,
        whose threads share each task). A plan of batch ``B`` over ``N`` images runs
        ``concurrent_tasks("batch", task_threads, ceil(N / B), ranks)`` tasks at once
        (:func:`dcnn.modes.concurrent_tasks`), each holding its batch's input and working set.
    """

    nodes: tuple[Node, ...]
    fraction: float = 0.8
    macs_per_second: float = DEFAULT_MACS_PER_SECOND
    bandwidth: float = 125e6
    latency: float = 50e-6
    runtime_bytes: int = RUNTIME_BYTES
    threads: int = 1
    task_threads: int = 1

    def __post_init__(self):
        if not self.nodes:
            raise InputError("a cluster needs at least one node")
        check_number(self.fraction, "the memory fraction ('fraction')", above=0, maximum=1)
        check_number(self.macs_per_second, "the node speed ('gmacs')", above=0)
        check_number(self.bandwidth, "the bandwidth ('bandwidth_gbit')", above=0)
        check_number(self.latency, "the latency ('latency_us')", minimum=0)
        check_number(self.threads, "--threads", minimum=1)
        check_number(self.task_threads, "the task threads of a rank", minimum=1)
        for node in self.nodes:
            check_number(node.ram, f"node {node.name}: 'ram'", above=0)
            check_number(node.speed, f"node {node.name}: 'speed'", above=0)

    @classmethod
    def uniform(cls, count: int, ram: int, fraction: float = 0.8, **constants) -> Cluster:
        """``count`` equal nodes of ``ram`` bytes."""
        if count < 1:
            raise InputError(f"a cluster needs at least one node, got {count}")
        return cls(tuple(Node(f"node{i}", ram) for i in range(count)), fraction, **constants)

    @classmethod
    def per_rank_budget(cls, count: int, budget: int, **constants) -> Cluster:
        """``count`` ranks with ``budget`` bytes each for the whole process (``--mem-per-rank``)."""
        return cls.uniform(count, budget, 1.0, **constants)

    @classmethod
    def load(cls, path: str | Path) -> Cluster:
        """A cluster file (TOML): ``fraction``, ``gmacs``, ``bandwidth_gbit``, ``latency_us`` at the top level,
        and ``[[node]]`` tables with ``name``, ``ram`` (e.g. ``"4GiB"``), ``speed`` and ``count``."""
        data = read_toml(path, "cluster file")
        nodes = []

        def size(key: str, value: object) -> int:
            try:
                return parse_bytes(value)
            except InputError as error:
                raise InputError(f"{path}: {key!r}: {error}") from None

        try:
            for entry in data.get("node", []):
                count = int(entry.get("count", 1))
                if not 1 <= count <= MAX_CLUSTER_NODES:
                    raise InputError(f"{path}: a node 'count' must be between 1 and {MAX_CLUSTER_NODES}, got {count}")
                for index in range(count):
                    name = entry.get("name", "node")
                    nodes.append(Node(f"{name}{index}" if count > 1 else name, size("ram", entry["ram"]),
                                      float(entry.get("speed", 1.0))))
            constants = {"fraction": float(data.get("fraction", 0.8))}
            if "gmacs" in data:
                constants["macs_per_second"] = float(data["gmacs"]) * 1e9
            if "bandwidth_gbit" in data:
                constants["bandwidth"] = float(data["bandwidth_gbit"]) * 1e9 / 8
            if "latency_us" in data:
                constants["latency"] = float(data["latency_us"]) * 1e-6
            if "runtime" in data:
                constants["runtime_bytes"] = size("runtime", data["runtime"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: bad cluster entry ({error!r}); see docs/planner.md") from None
        return cls(tuple(nodes), **constants)

    @property
    def size(self) -> int:
        """Number of nodes (ranks)."""
        return len(self.nodes)

    def budget(self, rank: int) -> int:
        """Bytes rank ``rank`` may use."""
        return int(self.nodes[rank].ram * self.fraction)

    def rate(self, rank: int) -> float:
        """Multiply-accumulates per second of one node."""
        return self.nodes[rank].speed * self.macs_per_second


def for_process(cluster: Cluster, reader: int = 0, threads: int = 1, task_threads: int = 1) -> Cluster:
    """``cluster`` as each rank's process runs it: ``reader`` more bytes of runtime (what reading a model file
    holds, :func:`dcnn.exec.imported.reader_bytes`; 0 for a built-in model), ``threads`` kernel threads and, in
    batch mode, ``task_threads`` task threads (see :class:`Cluster`). ``python -m dcnn.plan`` and ``python -m
    dcnn.infer`` both plan through it."""
    return replace(cluster, runtime_bytes=cluster.runtime_bytes + reader, threads=threads, task_threads=task_threads)


@dataclass
class RunPlan:
    """One way to run a model on a cluster, with its predicted memory per rank and time.

    Attributes
    ----------
    mode : str
        ``batch``, ``spatial`` or ``fused``.
    batch : int
        Images per forward pass.
    grid : tuple of int or None
        Spatial mode: the rank grid; fused mode: the tile grid.
    halo_policy : str or None
        Fused mode: what tiles do with the halos they share, ``recompute`` or ``reuse``.
    memory : list of dict
        Per rank, bytes per item (``runtime``, ``weights``, ...).
    largest : dict
        Per item, what dominates it (e.g. the layer whose weights or activations are largest).
    seconds : float
        Predicted time for the image set.
    depth : int or None
        Fused mode: the layers fused (``None``: every tileable one, see
        :func:`~dcnn.decomposition.fused.tileable_depth`).
    """

    mode: str
    batch: int
    grid: tuple[int, int] | None
    halo_policy: str | None
    memory: list[dict[str, int]]
    largest: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    depth: int | None = None
    _peaks: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

    def peak(self, rank: int | None = None) -> int:
        """Predicted bytes of one rank (the largest over ranks by default), with the model's error margin."""
        if len(self._peaks) != len(self.memory):  # computed once: the planner asks for every rank many times
            self._peaks = [int(sum(items.values()) * (1 + MODEL_MARGIN)) for items in self.memory]
        return max(self._peaks) if rank is None else self._peaks[rank]

    def overflow(self, cluster: Cluster) -> tuple[int, int, int] | None:
        """``(rank, needed, available)`` of the rank most over its budget, or ``None`` if every rank fits."""
        worst = max(range(cluster.size), key=lambda r: self.peak(r) - cluster.budget(r))
        needed, available = self.peak(worst), cluster.budget(worst)
        return None if needed <= available else (worst, needed, available)

    def largest_item(self, rank: int) -> tuple[str, str]:
        """The item of one rank's memory that is largest besides the runtime: its name, and a description such as
        ``"weights, 230.2 MiB (largest layer classifier.0, 98.0 MiB)"``."""
        items = self.memory[rank]
        name = max((item for item in items if item != "runtime"), key=items.get)
        text = f"{name}, {format_bytes(items[name])}"
        if name in self.largest:
            text += f" (largest layer {self.largest[name]})"
        return name, text

    def describe(self) -> str:
        """``"fused 4x4 reuse, batch 2"`` and the like."""
        text = self.mode
        if self.grid is not None:
            text += " " + format_shape(self.grid)
        if self.halo_policy:
            text += " " + self.halo_policy
        if self.depth is not None:
            text += f" depth {self.depth}"
        return f"{text}, batch {self.batch}"

    def infer_arguments(self) -> list[str]:
        """The ``python -m dcnn.infer`` options that run this plan."""
        arguments = ["--mode", self.mode, "--batch-size", str(self.batch)]
        if self.mode == "spatial":
            arguments += ["--grid", format_shape(self.grid)]
        if self.mode == "fused":
            arguments += ["--tiles", format_shape(self.grid), "--halo-policy", self.halo_policy]
        if self.depth is not None:
            arguments += ["--fuse-depth", str(self.depth)]
        return arguments


@dataclass(frozen=True)
class Stage:
    """A second network that every rank runs whole after the planned one, with the models it holds besides:
    ``python -m dcnn.recognize``'s recognition (the face descriptor on batches of chips, after the landmarks).

    Attributes
    ----------
    name : str
        Its memory items are ``"<name> models"`` and ``"<name> activations"``.
    network : Network
        Run on whole inputs of ``network.input_shape``.
    batch : int
        Inputs per pass of ``network``.
    models : int
        Bytes of its other models (the landmark model).
    scratch : int
        Bytes of its other temporaries, at most, for one pass (the landmarks' and chips' of ``batch`` faces).
    image_bytes : float
        Bytes it holds per value of the planned network's input, per image of that network's pass (the images
        read again for the landmarks).
    """

    name: str
    network: Network
    batch: int
    models: int = 0
    scratch: int = 0
    image_bytes: float = 0.0

    def memory(self, input_shape: Shape, batch: int) -> dict[str, int]:
        """Its items next to a pass of the planned network over ``batch`` inputs of ``input_shape``: its
        network's weights as batch mode holds them (:func:`_weights`), input and largest working set
        (:func:`_input_bytes`, :func:`_whole_map_work`), as for any network, and its own bytes."""
        shape = self.network.input_shape
        work, _ = _whole_map_work(self.network, shape)
        return {f"{self.name} models": _weights(self.network, shape, 1)[0][0] + self.models,
                f"{self.name} activations": _input_bytes(shape, self.batch) + self.batch * work * BYTES_PER_VALUE
                + self.scratch + int(self.image_bytes * batch * math.prod(input_shape))}


@lru_cache(maxsize=64)
def _decomposition(network: Network, input_shape: Shape, dims: tuple[int, int], start: int):
    """The spatial plan (cached: memory and time of every batch size of a candidate share it; every caller passes
    ``start``, so one plan has one cache key)."""
    return plan_spatial(network, input_shape, dims, start)


@lru_cache(maxsize=64)
def _tiling(network: Network, input_shape: Shape, tiles: tuple[int, int], ranks: int, halo_policy: str,
            depth: int | None = None):
    """The fused plan and, for the reuse policy, its reuse plan (cached: candidates share them)."""
    fused = plan_fused(network, input_shape, tiles, depth)
    return fused, plan_reuse(fused, ranks) if halo_policy == "reuse" else None


@lru_cache(maxsize=64)
def _block_work(network: Network, input_shape: Shape, dims: tuple[int, int], start: int = 0) -> tuple[
        tuple[int, str], ...]:
    """Per rank of a spatial grid, the largest one-node working set (values per image) and its node (cached:
    every batch size of a candidate shares it). Besides the node's own input and output, the rank's blocks of
    the other tensors alive meanwhile count (an add's second input, a residual skip)."""
    spatial = _decomposition(network, input_shape, dims, start)
    work = [(0, "")] * (dims[0] * dims[1])
    live = network.live_tensors()
    blocks = {network.layers[p.index][0]: (p.out_shape[0], p.out_blocks) for p in spatial.layers}
    for layer_plan in spatial.layers:
        name = network.layers[layer_plan.index][0]
        others = [blocks[t] for t in live[layer_plan.index] if t in blocks and t not in (name, layer_plan.sources[0])]
        for rank, out in enumerate(layer_plan.out_blocks):
            source = layer_plan.needed[rank] if layer_plan.windowed else out
            value = _layer_work(layer_plan.layer, layer_plan.in_shape, layer_plan.out_shape,
                                (source.height, source.width), (out.height, out.width), layer_plan.padding[rank],
                                first=layer_plan.index == 0)
            value += sum(channels * boxes[rank].area for channels, boxes in others)
            work[rank] = max(work[rank], (value, name))
    return tuple(work)


# -- memory -------------------------------------------------------------------------------------------------------
def _layer_work(layer, in_shape: Shape, out_shape: Shape, source: tuple[int, int], output: tuple[int, int],
                padding=(0, 0, 0, 0), first: bool = False) -> int:
    """Values one layer holds at once for one image: its input region, its output, and a convolution's scratch
    (the padded input copy and the GEMM output). The ``first`` layer's input region is a view of the network input,
    which the ``input`` item counts: it is not counted again."""
    values = (0 if first else in_shape[0] * source[0] * source[1]) + out_shape[0] * output[0] * output[1]
    if isinstance(layer, Conv2d):
        top, bottom, left, right = padding
        values += in_shape[0] * (source[0] + top + bottom) * (source[1] + left + right)
        values += out_shape[0] * output[0] * (output[1] + left + right)
    return values


def _weights(network: Network, input_shape: Shape, ranks: int) -> tuple[list[int], str]:
    """Per rank, weight bytes held when fully connected layers are split over ``ranks`` (1: all of them);
    and the layer with the most bytes on rank 0, with those bytes."""
    held = [0] * ranks
    top = (0, "")
    declared = network.declared_map_sizes()  # the kernels choose their method for these maps
    for index, row in enumerate(network.costs(input_shape)):
        if isinstance(row.layer, Linear):
            shares = [row.param_bytes * (stop - start) // row.layer.out_features
                      for start, stop in fc_shards(row.layer.out_features, ranks)]
        elif isinstance(row.layer, Conv2d):
            # A convolution's weights are held twice: as loaded, and laid out for its kernel (Winograd's
            # transformed filters are four times the 3x3 ones).
            layer = row.layer
            shape = (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
            shares = [row.param_bytes + layout_bytes(shape, layer.stride, layer.dilation, layer.groups,
                                                     declared[index])] * ranks
        else:
            shares = [row.param_bytes] * ranks
        held = [a + b for a, b in zip(held, shares, strict=True)]
        top = max(top, (shares[0], row.name))
    return held, f"{top[1]}, {format_bytes(top[0])}"


def _conv_methods(runs: list[tuple[Network, Shape, int]]) -> list[tuple[Conv2d, LayerCost, int, str]]:
    """``(layer, cost row, batch, method)`` of every convolution of each ``(network, input shape, batch)``, with
    the formulation its kernel takes (:func:`dcnn.kernels.conv.choose_method` at the network's declared maps)."""
    convs = []
    for network, input_shape, batch in runs:
        declared = network.declared_map_sizes()  # the kernels choose their method for these maps
        for index, row in enumerate(network.costs(input_shape)):
            layer = row.layer
            if isinstance(layer, Conv2d) and len(row.out_shape) == 3:
                convs.append((layer, row, batch, choose_method(
                    layer.in_channels // layer.groups, layer.out_channels // layer.groups, layer.stride,
                    layer.kernel_size, layer.dilation, layer.groups, declared[index])))
    return convs


def _winograd_scratch(convs: list[tuple[Conv2d, LayerCost, int, str]]) -> int:
    """Bytes of the Winograd band buffers one thread keeps after running the convolutions ``convs``
    (:func:`_conv_methods`): per buffer role the largest that any Winograd layer needs
    (:func:`dcnn.kernels.winograd.scratch_bytes`; a thread grows each buffer and keeps it). Whole maps: a spatial
    block or fused tile needs no more."""
    roles: dict[str, int] = {}
    for layer, row, batch, method in convs:
        if method != "winograd":
            continue
        tiles = (-(-row.out_shape[1] // TILE), -(-row.out_shape[2] // TILE))
        for role, size in scratch_bytes(layer.in_channels, layer.out_channels, *tiles, batch).items():
            roles[role] = max(roles.get(role, 0), size)
    return sum(roles.values())


def _chunk_scratch(convs: list[tuple[Conv2d, LayerCost, int, str]]) -> int:
    """Bytes of the GEMM chunk buffers one thread allocates in a convolution of ``convs`` (:func:`_conv_methods`):
    about :data:`WIDE_CHUNK_L2` L2 caches for the kernel-row and shifted-output formulations, one for the others
    (:mod:`dcnn.kernels.conv`).
    Freed after each layer, but kept by the heap (:func:`dcnn.kernels.memory.steady_heap`): 8 MiB on a 2 MiB
    L2, which the runtime's margin no longer covered on such a machine."""
    wide = ("rows", "winograd-rows", "shifted-output")
    caches = max((WIDE_CHUNK_L2 if method in wide else 1 for *_, method in convs), default=0)
    return caches * cache_bytes(2)


def _input_bytes(input_shape: Shape, batch: int) -> int:
    # The float network input and the copy its preprocessing makes.
    return 2 * batch * math.prod(input_shape) * BYTES_PER_VALUE


def _whole_map_work(network: Network, input_shape: Shape, start: int = 0) -> tuple[int, str]:
    """The largest one-node working set (values per image) over nodes ``start..`` run on whole maps.

    A node holds its input and output (and a convolution's scratch), plus every other tensor alive while it
    runs: the other inputs of an add or concatenation, and tensors that later nodes still read (a residual
    skip), along the topological order (:meth:`Network.live_values`).
    """
    best = (0, "")
    rows = network.costs(input_shape)
    for index in range(start, len(network)):
        row = rows[index]
        name, layer, in_shape, out_shape = row.name, row.layer, row.in_shape, row.out_shape
        others = row.live_bytes // BYTES_PER_VALUE - math.prod(in_shape) - math.prod(out_shape)
        if len(in_shape) == 3:
            padding = (0, 0, 0, 0)
            if layer.window is not None:
                padding = layer.window.explicit_padding(in_shape[1], in_shape[2])
            work = _layer_work(layer, in_shape, out_shape, in_shape[1:], out_shape[1:] if len(out_shape) == 3
                               else (1, 1), padding, first=index == 0)
        else:
            work = math.prod(in_shape) + math.prod(out_shape)
        best = max(best, (work + others, name))
    return best


def memory_batch(network: Network, input_shape: Shape, batch: int, cluster: Cluster, tasks: int = 1) -> RunPlan:
    """Batch mode: every rank holds the whole model and runs whole images, ``tasks`` batches at once."""
    weights, heaviest = _weights(network, input_shape, 1)
    work, layer = _whole_map_work(network, input_shape)
    items = {"runtime": cluster.runtime_bytes, "weights": weights[0],
             "input": tasks * _input_bytes(input_shape, batch),
             "activations": tasks * batch * work * BYTES_PER_VALUE}
    return RunPlan("batch", batch, None, None, [dict(items) for _ in range(cluster.size)],
                {"weights": heaviest, "activations": layer})


def memory_spatial(network: Network, input_shape: Shape, batch: int, cluster: Cluster,
                   dims: tuple[int, int], start: int = 0) -> RunPlan:
    """Spatial mode: blocks and halos per rank, the gathered map, fully connected layers split by neurons (with
    ``start``: of the nodes after a fused block only)."""
    size = cluster.size
    spatial = _decomposition(network, tuple(input_shape), tuple(dims), start)
    weights, heaviest = _weights(network, input_shape, size)
    work = _block_work(network, tuple(input_shape), tuple(dims), start)
    tail, _ = _whole_map_work(network, input_shape, spatial.gather_index) if spatial.gather_index < len(network) \
        else (0, "")
    gathered = 2 * batch * math.prod(spatial.gathered_shape) * BYTES_PER_VALUE
    memory = [{"runtime": cluster.runtime_bytes, "weights": weights[rank],
               "input": _input_bytes(input_shape, batch),
               "activations": batch * max(work[rank][0], tail) * BYTES_PER_VALUE,
               "gathered map": gathered} for rank in range(size)]
    return RunPlan("spatial", batch, tuple(dims), None, memory,
                {"weights": heaviest, "activations": max(work)[1]})


def memory_fused(network: Network, input_shape: Shape, batch: int, cluster: Cluster, tiles: tuple[int, int],
                 halo_policy: str, depth: int | None = None) -> RunPlan:
    """Fused mode: the largest tile's working set, the assembled fused output, the strip pool; with a fused
    block shorter than the convolutional part (``depth``), the spatial run of the layers after it."""
    size = cluster.size
    fused, reuse = _tiling(network, tuple(input_shape), tuple(tiles), size, halo_policy, depth)
    weights, heaviest = _weights(network, input_shape, size)
    shapes = fused.shapes
    best = (0, "")
    for index, tile in enumerate(fused.tiles):
        steps = tile.steps if reuse is None else reuse.steps[index]
        borrowed = 0 if reuse is None else sum(strip.elements for strip in reuse.incoming[index])
        for layer, (out, source, padding) in enumerate(steps):
            in_shape = shapes[network.tensor_index(network.inputs[layer][0])]
            value = borrowed + _layer_work(network.layers[layer][1], in_shape, shapes[layer + 1],
                                           (source.height, source.width), (out.height, out.width), padding,
                                           first=layer == 0)
            best = max(best, (value, network.layers[layer][0]))
    tail = [{"activations": 0, "gathered map": 0}] * size
    if fused.depth < len(network):
        # The layers after the fused block run on a spatial engine over the assembled cut tensors.
        tail = memory_spatial(network, input_shape, batch, cluster, _square_dims(size), fused.depth).memory
    output = fused.cut_values()
    share = math.ceil(len(fused.tiles) / size) / len(fused.tiles)
    memory = [{"runtime": cluster.runtime_bytes, "weights": weights[rank], "input": _input_bytes(input_shape, batch),
               "activations": max(batch * best[0] * BYTES_PER_VALUE, tail[rank]["activations"]),
               "tile outputs": int(batch * output * BYTES_PER_VALUE * (2 + share)),
               "strip pool": 0 if reuse is None else batch * reuse.pool_elements[rank] * BYTES_PER_VALUE}
              for rank in range(size)]
    if fused.depth < spatial_depth(network):
        for rank in range(size):  # the last map of the spatial tail, gathered on every rank
            memory[rank]["gathered map"] = tail[rank]["gathered map"]
    return RunPlan("fused", batch, tuple(tiles), halo_policy, memory, {"weights": heaviest, "activations": best[1]},
                depth=depth)


def _square_dims(size: int) -> tuple[int, int]:
    """The most square ``Py x Px`` factorisation (as ``MPI.Compute_dims``: rows >= columns)."""
    rows = max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)
    return size // rows, rows


# -- time -----------------------------------------------------------------------------------------------------------
def predict_seconds(plan: RunPlan, network: Network, input_shape: Shape, cluster: Cluster, images: int) -> float:
    """Predicted wall time of ``images`` images (compute over node speeds, messages over the network)."""
    costs = network.costs(input_shape)
    total = sum(row.macs for row in costs)
    rates = [cluster.rate(rank) for rank in range(cluster.size)]
    network_seconds = 0.0
    if plan.mode == "batch":
        return images * total / sum(rates)
    if plan.mode == "spatial":
        spatial = _decomposition(network, tuple(input_shape), plan.grid, 0)
        share = [0.0] * cluster.size
        for layer_plan in spatial.layers:
            macs, area = costs[layer_plan.index].macs, layer_plan.out_shape[1] * layer_plan.out_shape[2]
            for rank, block in enumerate(layer_plan.out_blocks):
                share[rank] += macs * block.area / area
            if layer_plan.transfers:
                received = [0] * cluster.size
                for transfer in layer_plan.transfers:
                    received[transfer.dest] += transfer.box.area
                busiest = max(received)
                network_seconds += (cluster.latency
                                    + busiest * layer_plan.in_shape[0] * BYTES_PER_VALUE / cluster.bandwidth)
        compute = max(s / r for s, r in zip(share, rates, strict=True))
        rest = sum(row.macs for row in costs[spatial.gather_index:]) / sum(rates)
        gather = _allgather_seconds(math.prod(spatial.gathered_shape) * BYTES_PER_VALUE, cluster)
        return images * (compute + rest + network_seconds + gather)
    fused, reuse = _tiling(network, tuple(input_shape), plan.grid, cluster.size, plan.halo_policy, plan.depth)
    tiled = fused.macs()[0] if reuse is None else reuse.macs()
    if reuse is not None:
        strips = reuse.strip_bytes()
        remote = (cluster.size - 1) / cluster.size
        network_seconds += 2 * strips * remote / cluster.bandwidth / cluster.size + 3 * cluster.latency
    rest = sum(row.macs for row in costs[fused.depth:]) / sum(rates)
    gather = _allgather_seconds(fused.cut_values() * BYTES_PER_VALUE, cluster)
    return images * (tiled / sum(rates) + rest + network_seconds + gather)


def _allgather_seconds(nbytes: int, cluster: Cluster) -> float:
    if cluster.size == 1:
        return 0.0
    return math.ceil(math.log2(cluster.size)) * cluster.latency + nbytes * (cluster.size - 1) / cluster.size \
        / cluster.bandwidth


# -- choice ---------------------------------------------------------------------------------------------------------
def _splittable(network: Network) -> bool:
    """Whether spatial and fused mode can split ``network``'s maps (:func:`gather_index` accepts it)."""
    try:
        gather_index(network)
    except PlanError:
        return False
    return True


def _tile_grids(network: Network, input_shape: Shape) -> list[tuple[int, int]]:
    height, width = finest_grid(network, input_shape)
    return [(t, t) for t in range(2, 9) if t <= height and t <= width]


def _spatial_grids(network: Network, input_shape: Shape, size: int) -> list[tuple[int, int]]:
    """The ``Py x Px`` factorisations of ``size`` that give every rank a block of the first layer's output (a
    grid with more rows or columns than that map leaves ranks idle: 100,000 ranks on a 224x224 image)."""
    first = network.shapes(input_shape)[1]
    height, width = first[1:] if len(first) == 3 else (1, 1)
    return [(rows, size // rows) for rows in range(1, min(size, height) + 1)
            if size % rows == 0 and size // rows <= width]


def plan_for(network: Network, input_shape: Shape, cluster: Cluster, mode: str, batch: int,
             grid: tuple[int, int] | None = None, halo_policy: str | None = None, images: int = 1,
             depth: int | None = None, batch_images: int | None = None, stage: Stage | None = None) -> RunPlan:
    """The plan of one given configuration, with its predicted time.

    ``batch_images`` is how many images of this shape there are: a forward pass never holds more, so memory is
    modelled for ``min(batch, batch_images)`` images (a 1-image set at batch 4 is planned as 1 image).
    ``images`` is the run's image count: in batch mode its ``ceil(images / batch)`` tasks decide how many a rank
    runs at once (:func:`dcnn.modes.concurrent_tasks`, with ``cluster.task_threads``).
    ``stage``: a network every rank runs after this one (its items join every rank's, see :class:`Stage`).
    """
    real = batch if batch_images is None else max(1, min(batch, batch_images))
    tasks = concurrent_tasks(mode, cluster.task_threads, -(-images // batch), cluster.size)
    if mode == "batch":
        plan = memory_batch(network, input_shape, real, cluster, tasks)
    elif mode == "spatial":
        plan = memory_spatial(network, input_shape, real, cluster, grid or _square_dims(cluster.size))
    elif mode == "fused":
        plan = memory_fused(network, input_shape, real, cluster, grid, halo_policy or "reuse", depth)
    else:
        raise PlanError(f"the planner knows modes {', '.join(MODES)}, not {mode!r}")
    if stage is not None:
        for items in plan.memory:
            items.update(stage.memory(input_shape, real))
            items[f"{stage.name} activations"] *= tasks  # every task thread runs the stage on its own task
    runs = [(network, input_shape, real)] + ([(stage.network, stage.network.input_shape, stage.batch)] if stage
                                              else [])
    # Every kernel thread keeps its own buffers, the calling one included (it runs a slice of each parallel loop).
    convs = _conv_methods(runs)  # one pass over the layers for both kinds of scratch
    scratch = cluster.threads * _winograd_scratch(convs)
    chunks = cluster.threads * _chunk_scratch(convs)
    for items in plan.memory:
        if scratch:
            items["winograd scratch"] = scratch
        if chunks:
            items["chunk scratch"] = chunks
    plan.batch = batch
    plan.seconds = predict_seconds(plan, network, input_shape, cluster, images)
    return plan


def worst_shapes(counts: Mapping[Shape, int], batch: int) -> list[tuple[Shape, int]]:
    """The input shapes (with their image counts) whose plans bound those of all others.

    Every memory item grows with the input's height and width and with the real batch ``min(batch, count)``;
    a shape no larger in all three than another one needs no more memory under any configuration, so only the
    shapes that no other dominates are planned (a handful even for thousands of distinct sizes). Largest first.
    """
    keyed = sorted(((shape[1], shape[2], min(batch, count), shape, count) for shape, count in counts.items()),
                   reverse=True)
    front: list[tuple[int, int, int, Shape, int]] = []
    for height, width, real, shape, count in keyed:
        if not any(w >= width and r >= real for _, w, r, _, _ in front):
            front.append((height, width, real, shape, count))
    return [(shape, count) for *_, shape, count in sorted(front, key=lambda k: (-k[0] * k[1], -k[2]))]


def plan_shapes(network: Network, shapes: list[tuple[Shape, int]], cluster: Cluster, mode: str, batch: int,
                grid: tuple[int, int] | None = None, halo_policy: str | None = None, images: int = 1,
                depth: int | None = None, stage: Stage | None = None) -> tuple[RunPlan, Shape]:
    """One configuration over several input shapes (from :func:`worst_shapes`): the plan of the shape that
    exceeds the cluster's budgets most (needs the most memory when all fit), and that shape. ``stage``: see
    :func:`plan_for`."""
    planned = [(plan_for(network, shape, cluster, mode, batch, grid, halo_policy, images, depth, count, stage), shape)
               for shape, count in shapes]
    return max(planned, key=lambda item: (_excess(item[0], cluster), item[0].peak()))


def _excess(plan: RunPlan, cluster: Cluster) -> int:
    """Bytes by which the rank most over its budget exceeds it (0 when every rank fits)."""
    overflow = plan.overflow(cluster)
    return 0 if overflow is None else overflow[1] - overflow[2]


def plans(network: Network, input_shape: Shape, cluster: Cluster, batch: int, images: int = 1,
          modes: tuple[str, ...] = MODES, batch_images: int | None = None,
          tile_limit: tuple[int, int] | None = None, stage: Stage | None = None) -> list[RunPlan]:
    """Every candidate: each mode, rank grid, tile grid and policy, at batch sizes ``batch``, ``batch/2``, .. 1.

    ``batch_images`` and ``stage``: see :func:`plan_for`. ``tile_limit`` bounds the tile grids (rows, columns):
    the smallest fused output map of a set of sizes. A network that spatial and fused mode cannot split
    (:func:`~dcnn.decomposition.spatial.gather_index`) has batch candidates only, when batch mode is among
    ``modes``; otherwise its splitting candidates raise why.

    Raises
    ------
    PlanError
        For a spatial or fused candidate that cannot be planned, batch mode not being considered.
    """
    sizes = sorted({max(1, batch >> shift) for shift in range(batch.bit_length())}, reverse=True)
    configurations = []
    if "batch" in modes:
        configurations.append(("batch", None, None))
        if not _splittable(network):
            modes = ("batch",)
    if "spatial" in modes and cluster.size > 1:
        configurations += [("spatial", dims, None) for dims in _spatial_grids(network, input_shape,
                                                                                     cluster.size)]
    if "fused" in modes:
        limit = tile_limit or (math.inf, math.inf)
        configurations += [("fused", tiles, halo_policy) for tiles in _tile_grids(network, input_shape)
                           if tiles[0] <= limit[0] and tiles[1] <= limit[1] for halo_policy in ("reuse", "recompute")]
    return [plan_for(network, input_shape, cluster, mode, size, grid, halo_policy, images, batch_images=batch_images,
                     stage=stage)
            for mode, grid, halo_policy in configurations for size in sizes]


def choose_plan(network: Network, input_shape: Shape, cluster: Cluster, batch: int, images: int = 1,
                modes: tuple[str, ...] = MODES, batch_images: int | None = None,
                others: list[tuple[Shape, int]] = (), tile_limit: tuple[int, int] | None = None,
                stage: Stage | None = None) -> RunPlan:
    """The feasible plan with the least predicted time (larger batches first among equals).

    Parameters
    ----------
    network : Network
        The model.
    input_shape : tuple of int
        Per-image network input ``(C, H, W)`` in pixels.
    cluster : Cluster
        The nodes (RAM in bytes, relative speed) and the cost model's constants.
    batch : int
        The largest batch (images per forward pass) to consider; halves down to 1 are tried too.
    images : int
        Images in the run (the predicted seconds are for all of them).
    modes : tuple of str
        The modes to consider (:data:`dcnn.modes.PLANNED_MODES` by default).
    batch_images : int, optional
        The number of images of ``input_shape``: memory is modelled for at most that many per forward pass (see
        :func:`plan_for`).
    others : list of (shape, int)
        Further input shapes with their image counts (a set of several sizes, see :func:`worst_shapes`;
        ``input_shape`` is the largest): a plan is feasible only if it fits all of them.
    tile_limit : tuple of int, optional
        Bounds the tile grids (rows, columns), see :func:`plans`.
    stage : Stage, optional
        See :func:`plan_for`.

    Returns
    -------
    RunPlan
        Mode, batch, rank or tile grid, halo policy, the predicted bytes per rank (``memory``, ``peak()``) and
        seconds; with ``others``, the plan of the shape needing the most memory.

    Raises
    ------
    PlanError
        When no plan fits, naming what does not fit, the bytes needed and available, and what would fit.
    """
    candidates = plans(network, input_shape, cluster, batch, images, modes, batch_images, tile_limit, stage)
    chosen = best_plan(candidates, network, input_shape, cluster, modes, stage, images)
    if not others:
        return chosen
    feasible = sorted((plan for plan in candidates if plan.overflow(cluster) is None),
                      key=lambda plan: (plan.seconds, -plan.batch, plan.peak()))
    for plan in feasible:
        heaviest, shape = plan_shapes(network, [(input_shape, batch_images or images), *others], cluster,
                                      plan.mode, plan.batch, plan.grid, plan.halo_policy, images, stage=stage)
        if heaviest.overflow(cluster) is None:
            heaviest.seconds = plan.seconds
            return heaviest
    rank, needed, available = heaviest.overflow(cluster)
    raise PlanError(f"{network.name}: no plan that fits {format_shape(input_shape)} also fits "
                    f"{format_shape(shape)} (even {heaviest.describe()} needs {format_bytes(needed)} on rank {rank}, "
                    f"which may use {format_bytes(available)})")


def best_plan(candidates: list[RunPlan], network: Network, input_shape: Shape, cluster: Cluster,
              modes: tuple[str, ...] = MODES, stage: Stage | None = None, images: int = 1) -> RunPlan:
    """:func:`choose_plan` among candidates already computed by :func:`plans` (same arguments)."""
    if not candidates:
        raise PlanError(f"no {' or '.join(modes)} plan for {cluster.size} nodes: a rank grid that large leaves "
                        f"ranks without a block of {network.name}'s maps; use fewer nodes or another mode")
    feasible = [plan for plan in candidates if plan.overflow(cluster) is None]
    if feasible:
        return min(feasible, key=lambda plan: (plan.seconds, -plan.batch, plan.peak()))
    # The leanest candidate; among equals (a set with fewer images than the batch plans them all alike) the
    # smallest batch, the one its message names.
    leanest = min(candidates, key=lambda plan: (plan.peak(), plan.batch))
    raise PlanError(explain_infeasible(network, input_shape, cluster, leanest, modes, stage, images))


def explain_infeasible(network: Network, input_shape: Shape, cluster: Cluster, plan: RunPlan,
                       modes: tuple[str, ...] = MODES, stage: Stage | None = None, images: int = 1) -> str:
    """Why ``plan`` (the leanest candidate, with ``stage`` if given) does not fit, and what would (the node
    count of :func:`nodes_that_fit` for the run's ``images``)."""
    rank, needed, available = plan.overflow(cluster)
    item, what = plan.largest_item(rank)
    message = (f"{network.name} on {format_shape(input_shape)} does not fit: even the leanest plan "
               f"({plan.describe()}) needs {format_bytes(needed)} on node {cluster.nodes[rank].name}, which has "
               f"{format_bytes(available)} ({cluster.fraction:.0%} of {format_bytes(cluster.nodes[rank].ram)}); "
               f"the largest part is the {what}, besides {format_bytes(plan.memory[rank]['runtime'])} for the "
               f"runtime")
    if stage is not None:
        items = plan.memory[rank]
        models, work = items[f"{stage.name} models"], items[f"{stage.name} activations"]
        message += (f". Whatever the plan, every node holds the {stage.name} models ({format_bytes(models)}) and "
                    f"their working set ({format_bytes(work)})")
    nodes = nodes_that_fit(network, input_shape, cluster, modes, stage, images)
    if nodes is not None:
        message += f". It fits on {nodes} such nodes"
        if plan.mode == "batch" or "weights" in item:
            message += " (fully connected layers split over them in spatial or fused mode)"
    else:
        message += f". No number of such nodes up to {MAX_NODES} holds it; use nodes with more memory"
    return message


def exact_conv_hint(network: Network, input_shape: Shape, cluster: Cluster, modes: tuple[str, ...],
                    stage: Stage | None, images: int, choose: Callable[[], RunPlan]) -> str:
    """The end of the message of a run without ``--exact-conv`` that nothing fits: what the exact kernels' filter
    layouts would change, or ``""`` if nothing.

    Winograd's transformed filters are four times the 3x3 ones and every rank holds them (VGG-16 on 384 MiB nodes:
    no node count fits with them, 8 nodes do without). ``choose`` plans the run again as its command does
    (``best_plan`` of the candidates, or ``choose_plan``), raising :class:`PlanError` when nothing fits; it runs
    with the exact layouts (:func:`dcnn.kernels.conv.set_exact`), which are reset afterwards. Without a plan that
    fits, the hint is the fewer nodes of :func:`nodes_that_fit`, if fewer.
    """
    exact_layouts = "with --exact-conv (filters in the exact kernels' layouts, not Winograd's) it fits"
    without = nodes_that_fit(network, input_shape, cluster, modes, stage, images)
    set_exact(True)
    try:
        try:
            return f"; or, {exact_layouts}: {choose().describe()}"
        except PlanError:
            exact = nodes_that_fit(network, input_shape, cluster, modes, stage, images)
    finally:
        set_exact(False)
    fewer = exact is not None and (without is None or exact < without)
    return f"; or, {exact_layouts} on {exact} such nodes" if fewer else ""


def _fixed_bytes(input_shape: Shape, cluster: Cluster, stage: Stage | None) -> int:
    """What every rank holds whatever the node count: the runtime, one input, and a stage's models and work."""
    held = cluster.runtime_bytes + _input_bytes(input_shape, 1)
    return held + (0 if stage is None else sum(stage.memory(input_shape, 1).values()))


def nodes_that_fit(network: Network, input_shape: Shape, cluster: Cluster, modes: tuple[str, ...],
                    stage: Stage | None = None, images: int = 1) -> int | None:
    """The fewest equal copies of the smallest node that hold some plan (``None`` if more than MAX_NODES).

    Each count's batch-mode plan runs the tasks at once that its ranks would have for the run's ``images``
    (:func:`plan_for`, :func:`dcnn.modes.concurrent_tasks`): more nodes leave each rank fewer tasks, so a rank of
    ``cluster.task_threads`` threads may run one task where it ran several.
    """
    smallest = min(cluster.nodes, key=lambda node: node.ram)
    if _fixed_bytes(input_shape, cluster, stage) >= int(smallest.ram * cluster.fraction):
        return None  # what every rank holds whatever the node count does not fit

    def fits(count: int) -> bool:
        larger = replace(cluster, nodes=tuple(Node(f"node{i}", smallest.ram) for i in range(count)))
        candidates = [plan_for(network, input_shape, larger, mode, 1, grid, halo_policy, images, stage=stage)
                      for mode, grid, halo_policy in _lean_configurations(network, input_shape, count, modes)]
        return any(plan.overflow(larger) is None for plan in candidates)

    count = cluster.size + 1
    while count <= MAX_NODES and not fits(count):
        count *= 2
    if count > MAX_NODES:
        return None
    low = max(cluster.size + 1, count // 2 + 1)
    while low < count:
        middle = (low + count) // 2
        if fits(middle):
            count = middle
        else:
            low = middle + 1
    return count


def _lean_configurations(network: Network, input_shape: Shape, size: int, modes: tuple[str, ...]) -> list:
    configurations = []
    if "spatial" in modes:
        configurations.append(("spatial", _square_dims(size), None))
    grids = _tile_grids(network, input_shape)
    if "fused" in modes and grids:
        configurations.append(("fused", grids[-1], "recompute"))
    if "batch" in modes:
        configurations.append(("batch", None, None))
    return configurations


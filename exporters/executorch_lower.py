"""Lower exported methods to one ExecuTorch program: ``to_edge_transform_and_lower`` -> ``to_executorch``.

With ``jobs > 1`` (Linux), each method is lowered in a forked process of its own, at most ``jobs`` at a time, and
the programs are merged into one (``exporters.pte_merge``). Lowering is single-threaded Python: at 110M
parameters one method takes 1-2 minutes, and the methods of a program are lowered independently of each
other, so on two cores two methods take the time of the slowest. The forked processes share the parent's
exported programs (copy on write) and run torch on one thread each.

The memory of this process and its lowering processes is sampled once a second while they run (the
proportional set size, which counts a page shared by several processes once) and reported as ``peak_mb``.
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pte_merge import merge_programs

log = logging.getLogger(__name__)

# bookkeeping ops that are not computation: never counted as "outside the delegate"
_NOT_OPS = {"getitem", "sym_size.int", "sym_size", "_assert_scalar", "sym_constrain_range_for_size",
            "mul", "add", "sub", "floordiv", "ge", "le", "eq"}
# started first when methods wait for a process: the decode method (symbolic token count) is the slowest
_SLOWEST_FIRST = ("decode",)


@dataclass
class Lowered:
    """A lowered program and what the manifest reports of it."""
    buffer: bytes                       # the serialized .pte
    reports: dict[str, dict]            # method -> delegation_report
    kernels: dict[str, Counter]         # method -> {op target text: count} of the calls left in its graph
    io: dict[str, tuple[int, int]]      # method -> (user inputs, user outputs) of the lowered program
    stages: dict[str, float] = field(default_factory=dict)          # stage -> seconds
    method_seconds: dict[str, float] = field(default_factory=dict)  # method -> seconds in its own process
    processes: int = 1                  # how many processes lowered the methods
    peak_mb: float | None = None        # sampled peak memory of this process and its lowering processes


def delegation_report(edge_program) -> dict:
    """Delegate partitions and the operators left to the portable kernels (op name -> count)."""
    gm = edge_program.graph_module
    outside: Counter = Counter()
    partitions = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            partitions += 1
            continue
        short = name.split("::")[-1]
        for prefix in ("aten.", "aten_", "dim_order_ops."):
            short = short[len(prefix):] if short.startswith(prefix) else short
        if short in _NOT_OPS:
            continue
        outside[short] += 1
    return {"delegate_partitions": partitions, "non_delegated_ops": dict(sorted(outside.items()))}


def default_jobs(n_methods: int) -> int:
    """One process per method, up to the cores this process may use; 1 where processes cannot be forked (not
    Linux, or this process is a daemon, which may not have children)."""
    if not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(n_methods, len(os.sched_getaffinity(0))))


def lower_methods(programs: dict, partitioners: dict, passes: list, planned_inputs: dict[str, bool], *,
                  jobs: int = 1, progress: bool = False, workdir: str | Path | None = None) -> Lowered:
    """Lower ``programs`` (method -> ExportedProgram) to one ExecuTorch program.

    ``partitioners``: method -> list of partitioners; ``passes``: edge transform passes; ``planned_inputs``: method
    -> whether its inputs are memory-planned (copied into its arena by a call). ``jobs``: processes (1: here).
    ``progress``: a bar of the methods lowered, on a terminal (with ``jobs > 1``). ``workdir``: where the processes
    leave their programs for the merge, in a temporary folder removed afterwards (None: the system's temporary
    folder, which may be memory-backed: the exporter passes the artifact folder).
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if jobs > 1 and multiprocessing.current_process().daemon:
        raise ValueError("jobs > 1 forks a process per method, and this process is a daemon, which may not have "
                         "children: pass jobs=1")
    if jobs == 1 or len(programs) == 1:
        return _lower(programs, partitioners, passes, planned_inputs)
    return _lower_forked(programs, partitioners, passes, planned_inputs, jobs, progress, workdir)


def _lower(programs, partitioners, passes, planned_inputs) -> Lowered:
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    t0 = time.perf_counter()
    edge = to_edge_transform_and_lower(programs, transform_passes=passes,
                                       partitioner={n: partitioners[n] for n in programs},
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    reports = {name: delegation_report(edge.exported_program(name)) for name in programs}
    t1 = time.perf_counter()
    planning = {name: MemoryPlanningPass(alloc_graph_input=planned_inputs[name]) for name in programs}
    et_program = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True,
                                                            memory_planning_pass=planning))
    kernels, io = {}, {}
    for name in programs:
        ep = et_program.exported_program(name)
        kernels[name] = Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
        io[name] = (len(ep.graph_signature.user_inputs), len(ep.graph_signature.user_outputs))
    buffer = et_program.buffer
    t2 = time.perf_counter()
    return Lowered(buffer, reports, kernels, io,
                   stages={"to_edge_transform_and_lower": round(t1 - t0, 2), "to_executorch": round(t2 - t1, 2)})


def _child(path: str, name: str, programs, partitioners, passes, planned_inputs) -> None:
    """Lower one method in a forked process: the .pte to ``path``, the rest pickled to ``path + '.meta'``."""
    torch.set_num_threads(1)  # one core per process (and no OpenMP pool inherited across fork)
    t0 = time.perf_counter()
    try:
        out = _lower({name: programs[name]}, partitioners, passes, planned_inputs)
        Path(path).write_bytes(out.buffer)
        out.buffer = b""
        out.method_seconds = {name: round(time.perf_counter() - t0, 2)}
        meta = {"ok": out}
    except BaseException as exc:  # reported by the parent
        meta = {"error": type(exc).__name__, "text": traceback.format_exc()}
    with open(path + ".meta", "wb") as f:
        pickle.dump(meta, f)


def _pss_mb(pids) -> float:
    """Proportional set size of these processes (MB): a page shared by n of them counts 1/n in each."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 1024.0


def start_forked(proc):
    """``proc.start()`` for a forked process whose garbage collector never frees what it inherits: this process's
    garbage is collected first, and what is left is frozen across the fork. A child that frees an inherited object
    can hang: an onnxruntime session (left in a reference cycle by earlier work in this process) waits in its
    destructor for thread-pool threads the child does not have."""
    gc.collect()
    gc.freeze()
    try:
        proc.start()
    finally:
        gc.unfreeze()
    return proc


def _lower_forked(programs, partitioners, passes, planned_inputs, jobs, progress, workdir) -> Lowered:
    from tqdm import tqdm

    ctx = multiprocessing.get_context("fork")
    pending = sorted(programs, key=lambda n: n not in _SLOWEST_FIRST)
    running: dict = {}
    results: dict[str, Lowered] = {}
    peak = 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=len(programs), desc=f"lowering in {min(jobs, len(programs))} processes", unit="method",
               leave=False, disable=None if progress else True)
    with tempfile.TemporaryDirectory(prefix=".lowering-", dir=workdir) as tmp:
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    name = pending.pop(0)
                    path = os.path.join(tmp, f"{name}.pte")
                    proc = start_forked(ctx.Process(target=_child, name=f"lower-{name}", daemon=True,
                                                    args=(path, name, programs, partitioners, passes, planned_inputs)))
                    running[name] = (proc, path)
                done = multiprocessing.connection.wait([p.sentinel for p, _ in running.values()], timeout=1.0)
                peak = max(peak, _pss_mb([os.getpid(), *(p.pid for p, _ in running.values())]))
                bar.set_postfix_str(", ".join(running), refresh=False)
                bar.refresh()
                for name, (proc, path) in list(running.items()):
                    if proc.sentinel not in done:
                        continue
                    proc.join()
                    del running[name]
                    results[name] = _collect(name, proc, path)
                    bar.update()
                    log.info(f"executorch export: lowered {name} in {results[name].method_seconds[name]}s "
                             "(its own process)")
        finally:  # on a failure the other processes are stopped before their folder goes
            bar.close()
            for proc, _ in running.values():
                proc.terminate()
                proc.join()
        t1 = time.perf_counter()
        try:
            buffer = merge_programs([results[n].buffer for n in programs])
        except (ImportError, AttributeError) as exc:  # ExecuTorch's (private) serializer moved: lower here instead
            log.warning("merging the lowered methods is unavailable (%s); lowering them in this process", exc)
            return _lower(programs, partitioners, passes, planned_inputs)
    t2 = time.perf_counter()
    merged = Lowered(buffer, {}, {}, {}, processes=min(jobs, len(programs)), peak_mb=round(peak))
    for name in programs:
        r = results[name]
        merged.reports.update(r.reports)
        merged.kernels.update(r.kernels)
        merged.io.update(r.io)
        merged.method_seconds.update(r.method_seconds)
    merged.stages = {"lower (processes)": round(t1 - t0, 2), "merge": round(t2 - t1, 2)}
    return merged


def _collect(name: str, proc, path: str) -> Lowered:
    try:
        with open(path + ".meta", "rb") as f:
            meta = pickle.load(f)
    except OSError:
        meta = {"error": "RuntimeError", "text": f"the process lowering {name!r} exited with code {proc.exitcode} "
                                                 "without a result (killed for memory?)"}
    if "error" in meta:
        if meta["error"] == "MemoryError":
            raise MemoryError(f"lowering {name!r} ran out of memory:\n{meta['text']}")
        raise RuntimeError(f"lowering the method {name!r} failed ({meta['error']}):\n{meta['text']}")
    out = meta["ok"]
    out.buffer = Path(path).read_bytes()
    return out

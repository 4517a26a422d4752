"""ExecuTorch backend: runs the ``.pte`` through ExecuTorch's Python runtime (its pybindings).

Torch: this backend needs torch. ExecuTorch's own Python runtime (``executorch.runtime`` and the
``executorch.extension.pybindings.portable_lib`` module under it) links libtorch, imports ``torch`` on
import and takes and returns ``torch.Tensor`` only (a numpy array is refused). torch and executorch are
therefore imported lazily, when an ``ExecuTorchBackend`` is created: ``import runtime`` and the onnxruntime
backend stay torch-free. The one torch-free ``.pte`` runner on PyPI (``executorch-numpy-runtime``, a
single-author beta) is pinned to another ExecuTorch release (1.3.1) and to Python >= 3.12, so it cannot open
this project's programs; see the project notes for the measured cost of torch here (RSS, speed).

A loaded ``Method`` is not thread-safe and reuses its output buffers: calls are serialised by a lock and
every returned array is a copy made under that lock.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ArtifactError, InfiniRuntimeError, InputError, ManifestError

# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy dtype names
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}


def _load_pybindings():
    """torch + ExecuTorch's Python runtime, imported on first use only."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental API" warnings on import
            import torch
            from executorch.extension.pybindings import portable_lib
    except ImportError as exc:
        raise InfiniRuntimeError(f"the executorch backend needs the executorch and torch packages "
                                 f"(pip install executorch): {exc}") from exc
    return torch, portable_lib


class ExecuTorchBackend:
    name = "executorch"

    def __init__(self, manifest, threads: int | None = None):
        program = manifest.data["program"]
        if program.get("format") != "pte":
            raise ManifestError(f"manifest program format is {program.get('format')!r}; the executorch backend "
                                "runs 'pte'")
        self.manifest = manifest
        self.method_name = program.get("method", "forward")
        self.delegate = program.get("delegate")
        self._torch, pl = _load_pybindings()
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise InputError(f"threads must be None or an integer >= 1, got {threads!r}")
            pl._unsafe_reset_threadpool(threads)  # process-wide: ExecuTorch has one CPU thread pool
        path = manifest.file_path(program["file"])
        try:
            data = path.read_bytes()  # a private copy: the file may change or vanish after loading
        except OSError as exc:
            raise ArtifactError(f"cannot read the ExecuTorch program {path}: {exc}") from exc
        try:
            self._program = pl._load_program_from_buffer(
                data, program_verification=pl.Verification.InternalConsistency)
            names = [self._program.get_method_name(i) for i in range(self._program.num_methods())]
            if self.method_name not in names:
                raise ArtifactError(f"{path} has the methods {names}, the manifest names {self.method_name!r}")
            self.meta = self._program.method_meta(self.method_name)
            self._method = self._program.load_method(self.method_name)
        except ArtifactError:
            raise
        except Exception as exc:  # RuntimeError with an ExecuTorch error code: truncated, corrupt, wrong version
            raise ArtifactError(f"ExecuTorch cannot load {path} ({len(data)} bytes): "
                                f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__} "
                                "(truncated, corrupt, or written by an incompatible ExecuTorch)") from exc
        self._data = data  # the program may point into this buffer
        self._lock = threading.Lock()
        self._check_io()

    # ---- load-time checks ----------------------------------------------------------------------
    def _check_io(self) -> None:
        man, meta = self.manifest, self.meta
        n_in, n_out = meta.num_inputs(), meta.num_outputs()
        want_in, want_out = len(man.data["inputs"]), len(man.data["outputs"])
        if (n_in, n_out) != (want_in, want_out):
            raise ArtifactError(f"the ExecuTorch method {self.method_name!r} has {n_in} inputs and {n_out} outputs, "
                                f"the manifest lists {want_in} and {want_out} (a manifest from another model?)")
        batch_bounds = set()
        for kind, count, info, listed in (("input", n_in, meta.input_tensor_meta, man.data["inputs"]),
                                          ("output", n_out, meta.output_tensor_meta, man.data["outputs"])):
            for i in range(count):
                t, io = info(i), listed[i]
                sizes, dtype = tuple(t.sizes()), _SCALAR_TYPES.get(t.dtype(), f"scalar type {t.dtype()}")
                shape = io["shape"]
                fixed_ok = len(sizes) == len(shape) and all(
                    d == "batch" or int(d) == s for d, s in zip(shape, sizes))
                if dtype != io["dtype"] or not fixed_ok:
                    raise ArtifactError(f"the program's {kind} {i} is {dtype} {list(sizes)}, the manifest's "
                                        f"{io['name']!r} is {io['dtype']} {shape} (a manifest from another model?)")
                batch_bounds.update(s for d, s in zip(shape, sizes) if d == "batch")
        # the planned sizes of a dynamic axis are its upper bound
        self.max_batch = min(batch_bounds) if batch_bounds else 1
        if self.max_batch < man.max_batch:
            raise ArtifactError(f"the program accepts batches up to {self.max_batch}, the manifest promises "
                                f"{man.max_batch}")
        self._shapes = [tuple(io["shape"]) for io in man.data["inputs"]]
        self._dtypes = [np.dtype(io["dtype"]) for io in man.data["inputs"]]

    # ---- one segment ---------------------------------------------------------------------------
    def _check_inputs(self, arrays: list) -> int:
        if len(arrays) != len(self._shapes):
            raise InputError(f"the program takes {len(self._shapes)} inputs (ids + state), got {len(arrays)}")
        batch = arrays[0].shape[0] if arrays[0].ndim else 0
        if not 1 <= batch <= self.max_batch:
            raise InputError(f"batch size {batch} is outside what this ExecuTorch program accepts: 1 to "
                             f"{self.max_batch} (the bound it was exported with)")
        for arr, shape, dtype, io in zip(arrays, self._shapes, self._dtypes, self.manifest.data["inputs"]):
            want = tuple(batch if d == "batch" else int(d) for d in shape)
            if arr.shape != want or arr.dtype != dtype:
                raise InputError(f"input {io['name']!r} is {arr.dtype} {arr.shape}, the program takes {dtype} {want}")
        return batch

    def run(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        arrays = [np.asarray(ids), *(np.asarray(s) for s in state)]
        self._check_inputs(arrays)
        torch = self._torch
        inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]  # copied into planned memory
        with self._lock:
            outs = self._method.call(inputs, clone_outputs=False)
            # the outputs alias the method's planned buffers, overwritten by the next call: copy here
            arrays_out = [np.array(t.numpy(), copy=True) for t in outs]
        if len(arrays_out) != len(self.manifest.data["outputs"]):
            raise ArtifactError(f"the program returned {len(arrays_out)} outputs, the manifest lists "
                                f"{len(self.manifest.data['outputs'])}")
        return arrays_out[0], arrays_out[1:]

"""ExecuTorch backend: runs the ``.pte`` with one of two engines.

- ``"pybindings"``: ExecuTorch's own Python runtime (``executorch.extension.pybindings.portable_lib``, the
  layer under ``executorch.runtime``). **It needs torch**: the extension links libtorch, imports ``torch``
  on import and takes and returns ``torch.Tensor`` only (a numpy array is refused). It is the runtime of
  the very ExecuTorch release the exporter used.
- ``"numpy"``: ``executorch-numpy-runtime`` (PyPI, third party, beta), the same ExecuTorch C++ core with the
  XNNPACK delegate and the portable/optimized/quantized kernels behind a numpy-only binding. **torch-free**.
  It is built for one ExecuTorch release (1.3.1 at the time of writing; the 1.4.1 programs of this exporter
  load, and give bit-identical XNNPACK outputs) and ships wheels for Python >= 3.12 only.
  Measured (small preset, XNNPACK float32, max_batch 64, one core): peak RSS 118-150 MB against 369-398 MB
  with torch; open 0.05 s against 1.2-1.4 s (importing torch); the same tokens/s (~24k).
- ``"auto"`` (default): ``"pybindings"`` where executorch and torch import, else ``"numpy"``.

Either way torch and executorch are imported lazily, when an ``ExecuTorchBackend`` is created:
``import runtime`` and the onnxruntime backend stay torch-free.

The program is memory-mapped (both engines load it from its path): once XNNPACK has packed the delegated weights,
ExecuTorch unmaps those parts of the file, so the packed weights are the one resident copy. Replacing an artifact
is safe (the exporter writes a new folder and renames it; a mapped file that is renamed or removed stays readable);
a program file overwritten in place while a session has it open is not.

A loaded method is not thread-safe and (pybindings) reuses its output buffers: calls are serialised by a
lock and every returned array is a copy made under that lock. Inputs are checked against the program's
own signature (count, dtypes, fixed dims, the batch bound it was exported with) before it is called.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, InfiniRuntimeError, InputError, ManifestError
from .decode_check import DecodeCallCheck
from .programs import SegmentPrograms

ENGINES = ("auto", "pybindings", "numpy")
# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy dtype names
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}


HEADER_BYTES = 40  # the flatbuffer identifier and the extended header


def _check_header(path, data: bytes, size: int) -> None:
    """The .pte's magic and the sizes of its extended header (``data``: its first ``HEADER_BYTES``; ``size``: the
    file's), checked before ExecuTorch parses it.

    The pybindings abort the whole process on some malformed headers (an error message carrying the
    file's raw bytes cannot be turned into a Python string), so what is cheap to check is checked here.
    """
    magic = data[4:8]
    if size < 8 or magic[:2] != b"ET" or not magic[2:].isdigit():
        raise ArtifactError(f"{path} is not an ExecuTorch program: {size} bytes without the 'ET..' "
                            "flatbuffer identifier at offset 4")
    if data[8:12] == b"eh00" and len(data) >= 32:
        header_len = int.from_bytes(data[12:16], "little")
        program_size = int.from_bytes(data[16:24], "little")
        segment_base = int.from_bytes(data[24:32], "little")
        segment_size = int.from_bytes(data[32:40], "little") if header_len >= 32 and len(data) >= 40 else 0
        if header_len < 24 or program_size > size or segment_base + segment_size > size:
            raise ArtifactError(f"{path} is truncated or corrupt: its header announces a program of "
                                f"{program_size} bytes and {segment_size} bytes of segments from byte "
                                f"{segment_base}, the file has {size} bytes")


# ---- engines: load a program file (memory-mapped), describe the method, run numpy arrays ----------------------
class _PybindingsEngine:
    name = "pybindings"

    def __init__(self, threads: int | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental API" warnings on import
            import torch  # first: loads the libtorch the extension links against
            from executorch import version
            try:  # the compiled module itself: its wrapper portable_lib.py imports executorch.exir (seconds)
                from executorch.extension.pybindings import _portable_lib as portable_lib
            except ImportError:
                from executorch.extension.pybindings import portable_lib
            try:  # registers the quantized kernels (the int8 embedding lookup of int4 programs: embedding_byte)
                import executorch.kernels.quantized  # noqa: F401
            except ImportError:
                pass
        self._torch, self._pl = torch, portable_lib
        self.version = getattr(version, "__version__", "?")
        if threads is not None:
            portable_lib._unsafe_reset_threadpool(threads)  # process-wide: ExecuTorch has one CPU thread pool

    def load(self, path: Path) -> list[str]:
        pl = self._pl
        self._program = pl._load_program(str(path), program_verification=pl.Verification.InternalConsistency)
        return [self._program.get_method_name(i) for i in range(self._program.num_methods())]

    def method(self, name: str) -> "_Method":
        meta = self._program.method_meta(name)
        method = self._program.load_method(name)
        torch = self._torch

        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            # from_numpy shares the memory; the method copies its memory-planned inputs into its arena and reads
            # the others (the decode method's K/V cache) in place: ``inputs`` keeps them alive through the call
            inputs = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]
            outs = method.call(inputs, clone_outputs=False)
            # the outputs alias the method's planned buffers, overwritten by the next call: copy (under the lock)
            return [np.array(t.numpy(), copy=True) for t in outs]

        return _Method([(t.dtype(), tuple(t.sizes())) for t in map(meta.input_tensor_meta, range(meta.num_inputs()))],
                       [(t.dtype(), tuple(t.sizes())) for t in map(meta.output_tensor_meta, range(meta.num_outputs()))],
                       run)


class _Method:
    """One loaded method: its planned input/output (dtype code, sizes) and ``run(arrays) -> arrays``."""

    def __init__(self, inputs: list, outputs: list, run):
        self.inputs, self.outputs, self.run = inputs, outputs, run


class _NumpyEngine:
    name = "numpy"

    def __init__(self, threads: int | None):
        import executorch_numpy_runtime as en
        self._en = en
        self.version = getattr(en, "__et_version__", "?")
        if threads is not None:
            warnings.warn("executorch-numpy-runtime has no thread-count setting; threads is ignored", stacklevel=3)

    def load(self, path: Path) -> list[str]:
        self._program = self._en.Runtime.get().load_program(str(path))
        return list(self._program.method_names)

    def method(self, name: str) -> _Method:
        method = self._program.load_method(name)
        meta = method.metadata
        # fresh arrays already: it copies out of its arena
        return _Method([(t["scalar_type"], tuple(t["shape"])) for t in meta["inputs"]],
                       [(t["scalar_type"], tuple(t["shape"])) for t in meta["outputs"]],
                       lambda arrays: [np.asarray(o) for o in method(arrays)])


def _check_method_io(method: _Method, name: str, inputs: list, outputs: list) -> dict:
    """The method's planned I/O against the manifest's: count, dtypes, fixed dims; ``{symbol: planned sizes}``."""
    if (len(method.inputs), len(method.outputs)) != (len(inputs), len(outputs)):
        raise ArtifactError(f"the ExecuTorch method {name!r} has {len(method.inputs)} inputs and "
                            f"{len(method.outputs)} outputs, the manifest lists {len(inputs)} and {len(outputs)} "
                            "(a manifest from another model?)")
    bounds: dict = {}
    for kind, infos, listed in (("input", method.inputs, inputs), ("output", method.outputs, outputs)):
        for i, ((code, sizes), io) in enumerate(zip(infos, listed)):
            dtype, shape = _SCALAR_TYPES.get(code, f"scalar type {code}"), io.shape
            fixed_ok = len(sizes) == len(shape) and all(
                isinstance(d, str) or int(d) == s for d, s in zip(shape, sizes))
            if dtype != io.dtype or not fixed_ok:
                raise ArtifactError(f"the {name!r} method's {kind} {i} is {dtype} {list(sizes)}, the manifest's "
                                    f"{io.name!r} is {io.dtype} {list(shape)} (a manifest from another model?)")
            for d, s in zip(shape, sizes):
                if isinstance(d, str):
                    bounds.setdefault(d, set()).add(s)
    return bounds


def _make_engine(engine: str, threads: int | None):
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}")
    errors = []
    for cls in ((_PybindingsEngine, _NumpyEngine) if engine == "auto" else
                (_PybindingsEngine,) if engine == "pybindings" else (_NumpyEngine,)):
        try:
            return cls(threads)
        except ImportError as exc:
            errors.append(f"{cls.name}: {exc}")
    raise InfiniRuntimeError("the executorch backend needs the executorch and torch packages (pip install "
                             "executorch), or the torch-free executorch-numpy-runtime (Python >= 3.12); "
                             + "; ".join(errors))


class ExecuTorchBackend(SegmentPrograms):
    name = "executorch"

    def __init__(self, manifest, threads: int | None = None, engine: str = "auto"):
        program = manifest.program
        if program.format != "pte":
            raise ManifestError(f"manifest program format is {program.format!r}; the executorch backend "
                                "runs 'pte'")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise InputError(f"threads must be None or an integer >= 1, got {threads!r}")
        self.manifest = manifest
        self.method_name = program.method  # None: the program has no full-logits method
        self.delegate = program.delegate
        self.engine = _make_engine(engine, threads)
        path = manifest.program_path()
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(HEADER_BYTES)
        except OSError as exc:
            raise ArtifactError(f"cannot read the ExecuTorch program {path}: {exc}") from exc
        _check_header(path, head, size)
        dec = manifest.decode if manifest.decode is not None and manifest.decode.program.format == "pte" else None
        last = manifest.last_logits
        last = last if last is not None and last.program.format == "pte" else None
        self._decode_program = self._last_program = None
        try:
            # memory-mapped by ExecuTorch: the delegated parts are unmapped once XNNPACK has packed their weights,
            # so its packed weights are the one resident copy (a copy in memory would stay beside them)
            names = self.engine.load(path)
            if self.method_name is not None and self.method_name in names:
                self._step_program = self.engine.method(self.method_name)
            if dec is not None and dec.program.method in names:
                self._decode_program = self.engine.method(dec.program.method)
            if last is not None and last.program.method in names:
                self._last_program = self.engine.method(last.program.method)
        except Exception as exc:  # an ExecuTorch error code: truncated, corrupt, or an incompatible version
            raise ArtifactError(f"ExecuTorch ({self.engine.name} {self.engine.version}) cannot load {path} "
                                f"({size} bytes): {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"
                                " (truncated, corrupt, or written by an incompatible ExecuTorch)") from exc
        wanted = [m for m in [self.method_name] + [x.program.method for x in (dec, last) if x is not None]
                  if m is not None]
        if any(m not in names for m in wanted):
            raise ArtifactError(f"{path} has the methods {names}, the manifest names {wanted}")
        self._check_decode = DecodeCallCheck(dec) if dec is not None else None
        self._lock = threading.Lock()
        self._check_io()

    # ---- load-time checks ----------------------------------------------------------------------
    def _check_io(self) -> None:
        man = self.manifest
        bounds: dict = {}
        if self._step_program is not None:
            bounds = _check_method_io(self._step_program, self.method_name, man.inputs, man.outputs)
        if self._decode_program is not None:
            dec = man.decode
            _check_method_io(self._decode_program, dec.program.method, dec.inputs, dec.outputs)
        if self._last_program is not None:
            last = man.last_logits
            last_bounds = _check_method_io(self._last_program, last.program.method, last.inputs, last.outputs)
            bounds = bounds or last_bounds
        # the planned size of a dynamic axis is its upper bound
        self.max_batch = min(bounds["batch"]) if bounds.get("batch") else 1
        if self.max_batch < man.max_batch:
            raise ArtifactError(f"the program accepts batches up to {self.max_batch}, the manifest promises "
                                f"{man.max_batch}")
        self._shapes = [io.shape for io in man.inputs]
        self._dtypes = [np.dtype(io.dtype) for io in man.inputs]

    # ---- one segment ---------------------------------------------------------------------------
    def _check_inputs(self, arrays: list) -> None:
        if len(arrays) != len(self._shapes):
            raise InputError(f"the program takes {len(self._shapes)} inputs (ids + state), got {len(arrays)}")
        batch = arrays[0].shape[0] if arrays[0].ndim else 0
        if not 1 <= batch <= self.max_batch:
            raise InputError(f"batch size {batch} is outside what this ExecuTorch program accepts: 1 to "
                             f"{self.max_batch} (the bound it was exported with)")
        for arr, shape, dtype, io in zip(arrays, self._shapes, self._dtypes, self.manifest.inputs):
            want = tuple(batch if d == "batch" else int(d) for d in shape)
            if arr.shape != want or arr.dtype != dtype:
                raise InputError(f"input {io.name!r} is {arr.dtype} {arr.shape}, the program takes {dtype} {want}")

    def _run(self, method, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        arrays = [np.asarray(ids), *(np.asarray(s) for s in state)]
        self._check_inputs(arrays)
        arrays = [np.ascontiguousarray(a) for a in arrays]
        with self._lock:
            outs = method.run(arrays)
        if len(outs) != len(self.manifest.outputs):
            raise ArtifactError(f"the program returned {len(outs)} outputs, the manifest lists "
                                f"{len(self.manifest.outputs)}")
        return outs[0], outs[1:]

    # ---- the decode method -----------------------------------------------------------------------
    def run_decode(self, ids: np.ndarray, position: int, state: list[np.ndarray], cache: list[np.ndarray]):
        """One decode call: ``(logits (B, T, V), new state list, cache rows list (B, H, T, dh))``."""
        self._check_decode(ids, position, state, cache)
        if not 1 <= ids.shape[0] <= self.max_batch:
            raise InputError(f"batch size {ids.shape[0]} is outside what this ExecuTorch program accepts: 1 to "
                             f"{self.max_batch} (the bound it was exported with)")
        arrays = [np.ascontiguousarray(a) for a in (ids, np.array([position], dtype=np.int64), *state, *cache)]
        with self._lock:
            outs = self._decode_program.run(arrays)
        n = len(state)
        return outs[0], outs[1:1 + n], outs[1 + n:]

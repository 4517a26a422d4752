"""onnxruntime backend (torch-free)."""
from __future__ import annotations

import threading
import weakref

import numpy as np

from .. import fpenv
from ..ortenv import import_onnxruntime, shared_cpu_arena
from ..errors import ArtifactError, InputError, ManifestError
from ..lowmem import LOW_MEMORY_THRESHOLD, THRESHOLD, return_large_blocks
from ..manifest_schema import BATCH
from .programs import SegmentPrograms
from .decode_check import DecodeCallCheck
from .ort_weights import shared_initializers

_QUANTIZED = ("tensor(uint8)", "tensor(int8)")  # int4 (MatMulNBits) and int8 weights
_ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(double)": "float64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _dims_match(graph_dim, listed, max_batch: int) -> bool:
    symbolic = not isinstance(graph_dim, int)  # onnxruntime gives a str (or None) for a dim the graph leaves free
    if listed == BATCH:
        return symbolic or graph_dim == max_batch == 1
    return symbolic or graph_dim == listed  # a free dim takes the manifest's size (bounded by max_state_bytes)


def check_graph_io(manifest, graph_inputs, graph_outputs, inputs: list | None = None,
                   outputs: list | None = None) -> None:
    """The graph's own I/O (onnxruntime ``NodeArg``s: name, type, shape) against the manifest's (the segment step's,
    or ``inputs``/``outputs`` of another program), in order: names, dtypes, ranks and every fixed dim; the manifest's
    batch axis must be free in the graph."""
    for kind, graph_io, listed in (("input", graph_inputs, manifest.inputs if inputs is None else inputs),
                                   ("output", graph_outputs, manifest.outputs if outputs is None else outputs)):
        got = [(io.name, _ORT_TYPES.get(io.type, io.type), len(io.shape)) for io in graph_io]
        want = [(io.name, io.dtype, len(io.shape)) for io in listed]
        if got != want:
            raise ArtifactError(f"the ONNX graph's {kind}s {got} do not match the manifest's {want}")
        for io, entry in zip(graph_io, listed):
            if not all(_dims_match(g, d, manifest.max_batch) for g, d in zip(io.shape, entry.shape)):
                raise ArtifactError(f"the ONNX graph's {kind} {io.name!r} has shape {list(io.shape)}, the "
                                    f"manifest says {list(entry.shape)} (a manifest from another model?)")


EXECUTION_ORDERS = ("priority_based", "default")


def ort_execution_order(ort, name: str):
    if name not in EXECUTION_ORDERS:
        raise ValueError(f"execution_order must be one of {EXECUTION_ORDERS}, got {name!r}")
    return getattr(ort.ExecutionOrder, name.upper())


class OrtBackend(SegmentPrograms):
    name = "onnxruntime"

    def __init__(self, manifest, threads: int | None = None, profile: bool = False, denormal_as_zero: bool = True,
                 share_weights: bool = True, low_memory: bool = False, execution_order: str = "priority_based"):
        ort = import_onnxruntime()
        order = ort_execution_order(ort, execution_order)

        if manifest.program.format != "onnx":
            raise ManifestError(f"manifest program format is {manifest.program.format!r}; "
                                "the onnxruntime backend runs 'onnx'")
        self.manifest = manifest
        self.denormal_as_zero = denormal_as_zero
        return_large_blocks(LOW_MEMORY_THRESHOLD if low_memory else THRESHOLD)
        shared_arena = not low_memory and shared_cpu_arena(ort)
        shared, self._weights_map = shared_initializers(manifest, ort) if share_weights else ({}, None)
        self._shared = shared  # the OrtValues must outlive the sessions that use them
        self.shared_weights = bool(shared)

        quantized = manifest.quantization is not None
        lookup_tensors = set((manifest.embedding_lookup or {}).get("tensors", []))

        self.shared_names: dict[str, list[str]] = {}  # files key -> the initializers handed to that graph

        def options(key: str):
            initializers = shared.get(key)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if threads:
                opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.enable_profiling = profile
            # nodes in the graph's own order (each layer's memory write right after its keys and values), not
            # onnxruntime's default depth-first order from the outputs, which runs every layer's memory write
            # at the end of the call (the state outputs come after the logits) and so keeps every layer's
            # keys and values alive until then: 12 x 2 x 6 MB at 110M / N = 2048
            opts.execution_order = order
            # every activation allocated when produced and freed after its last use: onnxruntime's buffer reuse
            # (tensors planned into earlier tensors' buffers) and memory pattern (one block per input shape beside
            # the arena's chunks) held ~1 GB at 110M where ~112 MB is alive at once; off, the same speed (design.md)
            opts.enable_mem_pattern = False
            opts.enable_mem_reuse = False
            if low_memory:  # and from malloc, not an arena (see lowmem)
                opts.enable_cpu_mem_arena = False
            elif shared_arena:
                opts.add_session_config_entry("session.use_env_allocators", "1")
            # the graph's own (unshared) initializers from plain memory, not carved out of the activations' arena
            opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
            # flush denormals to zero while onnxruntime computes: the causal mask's exp(-inf) and the far tail of
            # exp() land in the denormal range, where x86 takes a microcode assist per element (MLAS softmax
            # over a masked 128x128 block: 230 us -> 31 us). Values below 1.2e-38 become 0; nothing else changes.
            # onnxruntime's option covers its pool threads but also leaves FTZ/DAZ set on the thread that creates
            # the session; ``fpenv`` undoes that and sets it on the calling thread only during ``run``.
            if denormal_as_zero:
                opts.add_session_config_entry("session.set_denormal_as_zero", "1")
            if quantized:  # int4/int8 kernels run on their prepacked form (unpacked, MatMulNBits dequantizes the
                # whole matrix per call: 7x slower at 110M): each graph loads and prepacks its quantized weights, and
                # only the float ones and the lookup table (read by Gather, never prepacked) are shared
                initializers = [(n, v) for n, v in initializers or []
                                if v.data_type() not in _QUANTIZED or n in lookup_tensors]
            elif initializers:  # the caller's buffers, one copy for every graph; a prepacked copy each is what we avoid
                opts.add_session_config_entry("session.disable_prepacking", "1")
            for name, value in initializers or []:
                opts.add_initializer(name, value)
            self.shared_names[key] = [name for name, _ in initializers or []]
            return opts

        def checked(key: str, inputs: list | None = None, outputs: list | None = None):
            """The graph of ``files[key]``, its I/O checked against the manifest's (the segment step's unless given)."""
            session = self._load(ort, manifest.file_path(key), options(key))
            check_graph_io(manifest, session.get_inputs(), session.get_outputs(), inputs, outputs)
            return session

        self.session = checked(manifest.program.file)
        self.input_names = manifest.input_names
        self.output_names = manifest.output_names
        dec = manifest.decode
        self.decode_session = None
        if dec is not None and dec.program.format == "onnx":
            self.decode_session = self._load(ort, manifest.file_path(dec.program.file), options(dec.program.file))
            check_graph_io(manifest, self.decode_session.get_inputs(), self.decode_session.get_outputs(),
                           dec.inputs, dec.outputs)
            self._decode_in, self._decode_out = dec.input_names, dec.output_names
            self._check_decode = DecodeCallCheck(dec)
            self._dec_cache = [e.name for e in dec.cache]
            self._in_place = dec.cache_in_place
            self._ort = ort
            self._bindings = _PerThread()  # the in-place program's binding (see ``_binding``)
            self._native = _native_binding(ort, self.decode_session)
        last = manifest.last_logits
        self.last_session = None
        if last is not None and last.program.format == "onnx":
            self.last_session = checked(last.program.file, last.inputs, last.outputs)

    def _binding(self, bufs: list[np.ndarray]) -> "_CacheBinding":
        """This thread's binding of the decode program with its caches bound to ``bufs``, made again only when the
        buffers change (a session passes the same cache arrays call after call)."""
        held = self._bindings.held
        if held is None or not held.holds(bufs):
            held = self._bindings.held = _CacheBinding(self.decode_session, self._ort, self._decode_in[-len(bufs):],
                                                       self._decode_out, bufs, self._dec_cache, self._native)
        return held

    @staticmethod
    def _load(ort, path, opts):
        try:
            with fpenv.preserved():
                return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc

    _step_program = property(lambda self: self.session)
    _last_program = property(lambda self: self.last_session)
    _decode_program = property(lambda self: self.decode_session)

    def _run(self, session, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = dict(zip(self.input_names, [ids, *state]))
        with fpenv.flush_denormals(self.denormal_as_zero):
            outputs = session.run(self.output_names, feeds)
        return outputs[0], outputs[1:]

    def run_decode(self, ids: np.ndarray, position: int, state: list[np.ndarray], cache: list[np.ndarray]):
        """One decode call: ``(logits (B, T, V), new state list, cache rows list (B, H, T, dh))``."""
        self._check_decode(ids, position, state, cache)
        if self._in_place:
            return self._run_in_place(ids, position, state, cache)
        feeds = dict(zip(self._decode_in, [ids, np.array([position], dtype=np.int64), *state, *cache]))
        with fpenv.flush_denormals(self.denormal_as_zero):
            outputs = self.decode_session.run(self._decode_out, feeds)
        n = len(state)
        return outputs[0], outputs[1:1 + n], outputs[1 + n:]

    def _run_in_place(self, ids: np.ndarray, position: int, state: list[np.ndarray], cache: list[np.ndarray]):
        """A program whose cache outputs are the whole caches (``GroupQueryAttention``'s present K/V): each is bound to
        its input's buffer, so the call reads the valid rows and writes the chunk's rows into ``cache`` at
        ``[:, :, position:position+T]`` (slots the call does not read; the rows before stay as they were)."""
        B, T = ids.shape
        if B > 1 and T > 1 and position > 0:  # GroupQueryAttention takes several tokens after a past at batch 1 only
            parts = [self._run_in_place(ids[b:b + 1], position, [s[b:b + 1] for s in state], [c[b:b + 1] for c in cache])
                     for b in range(B)]
            return (np.concatenate([p[0] for p in parts]), [np.concatenate(x) for x in zip(*(p[1] for p in parts))],
                    [np.concatenate(x) for x in zip(*(p[2] for p in parts))])
        n = len(state)
        bufs = [c if c.flags.c_contiguous and c.flags.writeable else np.ascontiguousarray(c) for c in cache]
        bind = self._binding(bufs)
        feeds = [np.ascontiguousarray(a) for a in (ids, np.array([position], dtype=np.int64), *state)]  # alive until run
        for name, a in zip(self._decode_in, feeds):
            bind.bind_input(name, a)
        for name in self._decode_out[:1 + n]:  # a fresh buffer per call: the arrays returned stay the caller's
            bind.bind_output(name)
        with fpenv.flush_denormals(self.denormal_as_zero):
            bind.run()
        values = bind.outputs()
        outputs = [values[i].numpy() for i in range(1 + n)]
        rows = [buf[:, :, position:position + T].copy() for buf in bufs]
        for c, buf, r in zip(cache, bufs, rows):
            if c is not buf and c.flags.writeable:  # the caller's array could not be bound: its rows written as the program did
                c[:, :, position:position + T] = r
        return outputs[0], outputs[1:], rows


class _PerThread(threading.local):
    held: "_CacheBinding | None" = None  # this thread's binding of the in-place decode program


def _native_binding(ort, session) -> bool:
    """Whether onnxruntime's Python wrapper exposes its native binding, session and module as this backend calls them
    (decided once per backend)."""
    return all(hasattr(obj, name) for obj, name in ((session.io_binding(), "_iobinding"), (session, "_sess"),
                                                     (ort, "capi"))) and hasattr(ort.capi, "_pybind_state")


class _CacheBinding:
    """An IO binding of an in-place decode program with the caches bound, as inputs and as outputs, to the caller's
    buffers; per call only the ids, the position and the state are bound and the other outputs allocated afresh.

    Calls go to onnxruntime's native binding where its Python wrapper exposes one (the wrapper's bookkeeping per
    call is for GPU graph capture, which a CPU session does not use, and its ``get_outputs`` wraps every output,
    the whole caches too), else through the wrapper. Natively the caches are remembered by weak reference: a
    binding does not keep a session's caches alive, and one whose buffers are gone is never run (``holds``). The
    buffers must not overlap: every layer's cache is written in place."""

    def __init__(self, session, ort, inputs: list[str], outputs: list[str], bufs: list[np.ndarray],
                 names: list[str], native: bool):
        """``inputs``: the cache inputs; ``outputs``: every output, the caches last; ``names``: the caches';
        ``native``: call onnxruntime's native binding (``_native_binding``)."""
        spans = sorted((b.ctypes.data, b.ctypes.data + b.nbytes, i) for i, b in enumerate(bufs))
        for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
            if start < end:
                raise InputError(f"decode cache tensors {names[min(i, j)]!r} and {names[max(i, j)]!r} share memory; "
                                 "the decode program writes each in place, so each needs its own buffer")
        self._refs = [weakref.ref(b) for b in bufs]
        public = session.io_binding()
        if native:
            native, sess, C = public._iobinding, session._sess, ort.capi._pybind_state  # C: onnxruntime's native module
            cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
            for name in outputs[:-len(bufs)]:  # first: ``outputs()`` follows the order names were first bound in
                native.bind_output(name, cpu)
            for name_in, name_out, b in zip(inputs, outputs[-len(bufs):], bufs):
                value = C.OrtValue.ortvalue_from_numpy(b, cpu)  # a view of ``b``: no reference to it
                native.bind_ortvalue_input(name_in, value)
                native.bind_ortvalue_output(name_out, value)
            self.bind_input = native.bind_input
            self.bind_output = lambda name: native.bind_output(name, cpu)
            self.run = lambda: sess.run_with_iobinding(native, None)
            self.outputs = native.get_outputs
        else:  # pragma: no cover - an onnxruntime whose wrapper is laid out otherwise
            for name in outputs[:-len(bufs)]:
                public.bind_output(name)
            for name_in, name_out, b in zip(inputs, outputs[-len(bufs):], bufs):
                value = ort.OrtValue.ortvalue_from_numpy(b)  # holds ``b``
                public.bind_ortvalue_input(name_in, value)
                public.bind_ortvalue_output(name_out, value)
            self.bind_input = public.bind_cpu_input
            self.bind_output = public.bind_output
            self.run = lambda: session.run_with_iobinding(public)
            self.outputs = public.get_outputs
        self._public = public  # owns the native binding

    def holds(self, bufs: list[np.ndarray]) -> bool:
        """Whether this binding's caches are ``bufs`` (the same live arrays)."""
        return len(self._refs) == len(bufs) and all(r() is b for r, b in zip(self._refs, bufs))

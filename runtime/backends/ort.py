"""onnxruntime backend (torch-free)."""
from __future__ import annotations

import numpy as np

from .. import fpenv
from ..ortenv import import_onnxruntime
from ..errors import ArtifactError, ManifestError
from .decode_check import check_decode_call

_ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32", "tensor(float16)": "float16"}


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, manifest, threads: int | None = None, profile: bool = False, denormal_as_zero: bool = True):
        ort = import_onnxruntime()

        if manifest.data["program"]["format"] != "onnx":
            raise ManifestError(f"manifest program format is {manifest.data['program']['format']!r}; "
                                "the onnxruntime backend runs 'onnx'")
        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_profiling = profile
        # flush denormals to zero while onnxruntime computes: the causal mask's exp(-inf) and the far tail of
        # exp() land in the denormal range, where x86 takes a microcode assist per element (MLAS softmax
        # over a masked 128x128 block: 230 us -> 31 us). Values below 1.2e-38 become 0; nothing else changes.
        # onnxruntime's option covers its pool threads but also leaves FTZ/DAZ set on the thread that creates
        # the session; ``fpenv`` undoes that and sets it on the calling thread only during ``run``.
        self.denormal_as_zero = denormal_as_zero
        if denormal_as_zero:
            opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        self.session = self._load(ort, manifest.file_path(manifest.data["program"]["file"]), opts)
        self._check_io(self.session, man_inputs=manifest.data["inputs"], man_outputs=manifest.data["outputs"])
        self.input_names = manifest.input_names
        self.output_names = manifest.output_names
        dec = manifest.decode
        self.decode_session = None
        if dec is not None and dec.program.get("format") == "onnx":
            self.decode_session = self._load(ort, manifest.file_path(dec.program["file"]), opts)
            self._check_io(self.decode_session, man_inputs=dec.inputs, man_outputs=dec.outputs)
            self._decode_in, self._decode_out = dec.input_names, dec.output_names

    @staticmethod
    def _load(ort, path, opts):
        try:
            with fpenv.preserved():
                return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc

    @staticmethod
    def _check_io(session, man_inputs: list, man_outputs: list) -> None:
        for kind, graph_io, listed in (("input", session.get_inputs(), man_inputs),
                                       ("output", session.get_outputs(), man_outputs)):
            got = [(io.name, _ORT_TYPES.get(io.type, io.type), len(io.shape)) for io in graph_io]
            want = [(io["name"], io["dtype"], len(io["shape"])) for io in listed]
            if got != want:
                raise ArtifactError(f"the ONNX graph's {kind}s {got} do not match the manifest's {want}")

    def run(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = dict(zip(self.input_names, [ids, *state]))
        with fpenv.flush_denormals(self.denormal_as_zero):
            outputs = self.session.run(self.output_names, feeds)
        return outputs[0], outputs[1:]

    @property
    def has_decode(self) -> bool:
        return self.decode_session is not None

    def run_decode(self, ids: np.ndarray, position: int, state: list[np.ndarray], cache: list[np.ndarray]):
        """One decode call: ``(logits (B, T, V), new state list, cache rows list (B, H, T, dh))``."""
        check_decode_call(self.manifest.decode, ids, position, state, cache)
        feeds = dict(zip(self._decode_in, [ids, np.array([position], dtype=np.int64), *state, *cache]))
        with fpenv.flush_denormals(self.denormal_as_zero):
            outputs = self.decode_session.run(self._decode_out, feeds)
        n = len(state)
        return outputs[0], outputs[1:1 + n], outputs[1 + n:]

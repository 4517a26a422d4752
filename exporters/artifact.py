"""The artifact folder both exporters write: program file(s) + manifest.json (shared code)."""
from __future__ import annotations

import datetime
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from infini_export.protocol import has_decode
from infini_export.state import INPUT_IDS, LOGITS, DecodeSpec, StepSpec, flatten_state
from runtime.atomic import atomic_write
from runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, Manifest, sha256_file

_LIBS = ("torch", "onnx", "onnxruntime", "onnxscript", "executorch", "torchao", "numpy", "infini-export")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_fingerprint(module: torch.nn.Module, spec: StepSpec) -> str:
    """sha256 of the spec and every parameter and buffer: the same model gives the same print on any backend."""
    h = hashlib.sha256()
    h.update(json.dumps({"vocab": spec.vocab_size, "segment_len": spec.segment_len,
                         "state": [(s.name, list(s.shape), s.dtype) for s in spec.state],
                         "extra": spec.extra}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def logits_dtype(module: torch.nn.Module) -> str:
    """The dtype ``step`` returns logits in (that of the weights, e.g. float16)."""
    with torch.no_grad():
        logits, _ = module.step(torch.zeros(1, 1, dtype=torch.int64), module.init_state(1))
    return str(logits.dtype).replace("torch.", "")


def io_entries(spec: StepSpec, batch_symbol: str = "batch", logits_dtype: str = "float32"):
    """Manifest ``inputs``, ``outputs`` and ``state`` entries, in graph (positional) order."""
    ins, outs = spec.input_names(), spec.output_names()
    inputs = [{"name": ins[0], "role": "ids", "dtype": "int64", "shape": [batch_symbol, spec.segment_len]}]
    outputs = [{"name": outs[0], "role": "logits", "dtype": logits_dtype,
                "shape": [batch_symbol, spec.segment_len, spec.vocab_size]}]
    state = []
    for s, i_name, o_name in zip(spec.state, ins[1:], outs[1:]):
        shape = [batch_symbol if d == "batch" else int(d) for d in s.shape]
        inputs.append({"name": i_name, "role": "state-in", "dtype": s.dtype, "shape": shape})
        outputs.append({"name": o_name, "role": "state-out", "dtype": s.dtype, "shape": shape})
        state.append({"name": s.name, "input": i_name, "output": o_name, "dtype": s.dtype, "shape": shape})
    assert inputs[0]["name"] == INPUT_IDS and outputs[0]["name"] == LOGITS
    return inputs, outputs, state


def decode_entries(dspec: DecodeSpec, program: dict, vocab_size: int, batch_symbol: str = "batch",
                   logits_dtype: str = "float32") -> dict:
    """The manifest's ``decode`` section: the decode program's I/O in graph order and how to drive it."""
    def shape(s):
        return [batch_symbol if d == "batch" else int(d) for d in s.shape]

    ins, outs = dspec.input_names(), dspec.output_names()
    n = len(dspec.state)
    inputs = [{"name": ins[0], "role": "ids", "dtype": "int64", "shape": [batch_symbol, "tokens"]},
              {"name": ins[1], "role": "position", "dtype": "int64", "shape": [1]}]
    outputs = [{"name": outs[0], "role": "logits", "dtype": logits_dtype,
                "shape": [batch_symbol, "tokens", vocab_size]}]
    state, cache = [], []
    whole = dspec.cache_output == "whole"  # the whole cache out (role cache-out), else the chunk's rows
    for j, s in enumerate(dspec.state + dspec.cache):
        is_state = j < n
        i_name, o_name = ins[2 + j], outs[1 + j]
        row_shape = shape(s) if is_state or whole else shape(s)[:2] + ["tokens"] + shape(s)[3:]
        inputs.append({"name": i_name, "role": "state-in" if is_state else "cache-in", "dtype": s.dtype,
                       "shape": shape(s)})
        outputs.append({"name": o_name, "role": "state-out" if is_state else "cache-out" if whole else "cache-rows",
                        "dtype": s.dtype, "shape": row_shape})
        entry = {"name": s.name, "input": i_name, "output": o_name, "dtype": s.dtype, "shape": shape(s)}
        (state if is_state else cache).append(entry if is_state else {**entry, "axis": 2})
    return {"program": program, "max_tokens": dspec.max_tokens,
            "position": ins[1], "inputs": inputs, "outputs": outputs, "state": state, "cache": cache}


def build_manifest(module: torch.nn.Module, spec: StepSpec, *, backend: str, program: dict, files: dict,
                   directory: Path | None, max_batch: int, exporter: dict | None = None,
                   quantization: str | None = None, decode_program: dict | None = None,
                   shared_weights: dict | None = None) -> dict:
    """The manifest document (see ``runtime.manifest``); ``files`` maps key -> path inside ``directory``.

    ``decode_program`` (where the module has the decode protocol and it was exported) adds the ``decode``
    section."""
    inputs, outputs, state = io_entries(spec, logits_dtype=logits_dtype(module))
    init = module.init_state(1)
    zeros = all(not t.any() for t in flatten_state(init))
    file_entries = {}
    for key, rel in files.items():
        path = directory / rel
        file_entries[key] = {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    initial = "zeros"
    if not zeros:  # a module may start from a non-zero state: ship it
        rel = "initial_state.npz"
        np.savez(directory / rel, **{s.name: t.numpy() for s, t in zip(spec.state, flatten_state(init))})
        file_entries["initial_state"] = {"path": rel, "sha256": sha256_file(directory / rel),
                                         "bytes": (directory / rel).stat().st_size}
        initial = {"file": "initial_state"}
    weight_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "program": program,
        "model": spec.extra,
        "model_fingerprint": model_fingerprint(module, spec),
        "segment_len": spec.segment_len,
        "vocab_size": spec.vocab_size,
        "batch": {"symbol": "batch", "min": 1, "max": max_batch},
        "inputs": inputs,
        "outputs": outputs,
        "state": state,
        "state_map": spec.state_map(),
        "initial_state": initial,
        "weights_dtype": weight_dtypes[0] if len(weight_dtypes) == 1 else weight_dtypes,
        "quantization": quantization,
        "files": file_entries,
        "exporter": {"name": "infini-export", **(exporter or {}), "versions": library_versions(),
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "parity": None,
        **_decode_section(module, spec, decode_program, logits_dtype(module)),
        **({"shared_weights": shared_weights} if shared_weights else {}),
    }


def _decode_section(module, spec: StepSpec, decode_program: dict | None, dtype: str) -> dict:
    if decode_program is None:
        return {}
    return {"decode": decode_entries(module.decode_spec(), decode_program, spec.vocab_size, logits_dtype=dtype)}


def write_manifest(directory: Path, data: dict) -> Path:
    """Atomic write of manifest.json (checked by the runtime's own parser first)."""
    Manifest.from_dict(data, directory)
    text = (json.dumps(data, indent=2) + "\n").encode()
    return atomic_write(directory / MANIFEST_FILE, lambda f: f.write(text))


def in_memory_manifest(module: torch.nn.Module, spec: StepSpec, backend: str = "eager") -> Manifest:
    """A manifest for a module that was not exported (the eager reference, driven by the same session)."""
    inputs, outputs, state = io_entries(spec)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "backend": backend,
            "program": {"format": "torch", "file": None}, "model": spec.extra,
            "model_fingerprint": model_fingerprint(module, spec), "segment_len": spec.segment_len,
            "vocab_size": spec.vocab_size, "batch": {"symbol": "batch", "min": 1, "max": 1 << 16},
            "inputs": inputs, "outputs": outputs, "state": state, "state_map": spec.state_map(),
            "initial_state": "zeros", "files": {},
            **_decode_section(module, spec, {"format": "torch", "file": None} if has_decode(module) else None,
                              "float32")}
    return Manifest.from_dict(data, None)

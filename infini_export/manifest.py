"""The manifest (``manifest.json``): the one builder, torch-free.

Exporters call it with what they measured of the module (fingerprint, dtypes) and the files they wrote; the eager
reference calls it for a manifest with no files. It returns ``runtime.manifest.Manifest``, the typed document that
is also its only reader, checker and writer.
"""
from __future__ import annotations

import datetime
import platform
from importlib import metadata

from runtime.manifest import FORMAT, FORMAT_VERSION, Manifest

_LIBS = ("torch", "onnx", "onnxruntime", "onnxscript", "executorch", "torchao", "numpy", "infini-export")
TORCH_PROGRAM = {"format": "torch", "file": None}  # the eager module itself: nothing on disk


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def _shape(spec_shape, batch_symbol: str) -> list:
    return [batch_symbol if d == "batch" else int(d) for d in spec_shape]


def io_entries(spec, batch_symbol: str = "batch", logits_dtype: str = "float32"):
    """Manifest ``inputs``, ``outputs`` and ``state`` entries of the segment step, in graph (positional) order."""
    ins, outs = spec.input_names(), spec.output_names()
    inputs = [{"name": ins[0], "role": "ids", "dtype": "int64", "shape": [batch_symbol, spec.segment_len]}]
    outputs = [{"name": outs[0], "role": "logits", "dtype": logits_dtype,
                "shape": [batch_symbol, spec.segment_len, spec.vocab_size]}]
    state = []
    for s, i_name, o_name in zip(spec.state, ins[1:], outs[1:]):
        shape = _shape(s.shape, batch_symbol)
        inputs.append({"name": i_name, "role": "state-in", "dtype": s.dtype, "shape": shape})
        outputs.append({"name": o_name, "role": "state-out", "dtype": s.dtype, "shape": shape})
        state.append({"name": s.name, "input": i_name, "output": o_name, "dtype": s.dtype, "shape": shape})
    return inputs, outputs, state


def decode_entries(dspec, program: dict, vocab_size: int, batch_symbol: str = "batch",
                   logits_dtype: str = "float32", max_chunk: int | None = None, form: str | None = None) -> dict:
    """The manifest's ``decode`` section: the decode program's I/O in graph order and how to drive it: at most
    ``max_chunk`` tokens a call (default: ``max_tokens - 1``; a whole segment goes through the segment step), the
    local attention's ``form`` as exported."""
    ins, outs = dspec.input_names(), dspec.output_names()
    n = len(dspec.state)
    inputs = [{"name": ins[0], "role": "ids", "dtype": "int64", "shape": [batch_symbol, "tokens"]},
              {"name": ins[1], "role": "position", "dtype": "int64", "shape": [1]}]
    outputs = [{"name": outs[0], "role": "logits", "dtype": logits_dtype,
                "shape": [batch_symbol, "tokens", vocab_size]}]
    state, cache = [], []
    whole = dspec.cache_output == "whole"  # the whole caches out (role cache-out), else the rows
    for j, s in enumerate(dspec.state + dspec.cache):
        is_state = j < n
        i_name, o_name = ins[2 + j], outs[1 + j]
        shape = _shape(s.shape, batch_symbol)
        row_shape = shape if is_state or whole else shape[:2] + ["tokens"] + shape[3:]
        inputs.append({"name": i_name, "role": "state-in" if is_state else "cache-in", "dtype": s.dtype,
                       "shape": shape})
        outputs.append({"name": o_name, "role": "state-out" if is_state else "cache-out" if whole else "cache-rows",
                        "dtype": s.dtype, "shape": row_shape})
        entry = {"name": s.name, "input": i_name, "output": o_name, "dtype": s.dtype, "shape": shape}
        (state if is_state else cache).append(entry if is_state else {**entry, "axis": 2})
    out = {"program": program, "max_tokens": dspec.max_tokens,
           "max_chunk": max(1, dspec.max_tokens - 1) if max_chunk is None else max_chunk,
           "cache_in_place": whole and bool(cache),
           "position": ins[1], "inputs": inputs, "outputs": outputs, "state": state, "cache": cache}
    return out if form is None else {**out, "form": form}


def last_logits_entries(inputs: list, outputs: list, program: dict, vocab_size: int) -> dict:
    """The manifest's ``last_logits`` section: the segment step's inputs and state outputs, the last token's logits
    ``[batch, 1, vocab]``, computed by ``program``."""
    logits = {**outputs[0], "shape": [outputs[0]["shape"][0], 1, vocab_size]}
    return {"program": program, "inputs": inputs, "outputs": [logits, *outputs[1:]]}


def manifest_document(spec, *, backend: str, program: dict, fingerprint: str, max_batch: int,
                      logits_dtype: str = "float32", weights_dtype: str | list[str] = "float32",
                      files: dict | None = None, initial_state="zeros", quantization: str | None = None,
                      exporter: dict | None = None, decode_spec=None, decode_program: dict | None = None,
                      shared_weights: dict | None = None, last_program: dict | None = None,
                      decode_max_chunk: int | None = None, decode_form: str | None = None,
                      embedding_lookup: dict | None = None, memory: dict | None = None, tokenizer: dict | None = None,
                      generation: dict | None = None, directory=None) -> Manifest:
    """The typed manifest (see ``runtime.manifest`` for every field), checked as a whole.

    ``spec`` is the module's ``StepSpec``; ``files`` maps key -> {"path", "sha256", "bytes"}; ``decode_spec`` with
    ``decode_program`` adds the ``decode`` section (``decode_max_chunk``, ``decode_form``: how it was exported);
    ``shared_weights`` the table of weights stored once; ``last_program`` the ``last_logits`` section (the segment
    step with the last token's logits only); ``embedding_lookup`` and ``memory`` what the exporter measured of
    its programs; ``tokenizer`` and ``generation`` those sections (``runtime.tokenizer_section``; the tokenizer's
    file in files); ``directory`` the artifact folder."""
    inputs, outputs, state = io_entries(spec, logits_dtype=logits_dtype)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "program": program,
        "model": spec.extra,
        "model_fingerprint": fingerprint,
        "segment_len": spec.segment_len,
        "vocab_size": spec.vocab_size,
        "batch": {"symbol": "batch", "min": 1, "max": max_batch},
        "inputs": inputs,
        "outputs": outputs,
        "state": state,
        "state_map": spec.state_map(),
        "initial_state": initial_state,
        "weights_dtype": weights_dtype,
        "quantization": quantization,
        "files": files or {},
        "exporter": {"name": "infini-export", **(exporter or {}), "versions": library_versions(),
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "parity": None,
    }
    if decode_spec is not None and decode_program is not None:
        doc["decode"] = decode_entries(decode_spec, decode_program, spec.vocab_size, logits_dtype=logits_dtype,
                                       max_chunk=decode_max_chunk, form=decode_form)
    if last_program is not None:
        doc["last_logits"] = last_logits_entries(inputs, outputs, last_program, spec.vocab_size)
    if shared_weights:
        doc["shared_weights"] = shared_weights
    if embedding_lookup is not None:
        doc["embedding_lookup"] = embedding_lookup
    if memory is not None:
        doc["memory"] = memory
    doc.update({k: v for k, v in (("tokenizer", tokenizer), ("generation", generation)) if v is not None})
    return Manifest.from_dict(doc, directory)

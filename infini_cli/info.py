"""``infini-export info ART`` for an artifact folder: files, weights, state and (ExecuTorch) planned memory."""
from __future__ import annotations

from pathlib import Path

MANIFEST_FILE = "manifest.json"


def is_artifact(path: str | Path) -> bool:
    """An artifact folder is recognised by its manifest.json."""
    return (Path(path) / MANIFEST_FILE).is_file()


def _onnx_weights_bytes(path: Path) -> int:
    """Bytes of the ONNX graph's initializers (its weights, quantized or not)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.raw_data else numpy_helper.to_array(init).nbytes
    return total


def parity_status(manifest) -> str:
    """One line on the export's parity run: passed, failed (and why), or never run."""
    p = manifest.parity
    if p is None:
        return "never run (this artifact was not validated against its model)"
    if p.passed:
        return f"passed over {p.segments} segments"
    why = p.error or (p.failures[0] if p.failures else "")
    return f"FAILED ({why[:160]})" if why else "FAILED"


def describe_artifact(path: str | Path) -> dict:
    """The facts ``info`` prints, as a dict: format, quantization, files, weights, state, parity, planned memory."""
    from runtime.manifest import Manifest

    path = Path(path)
    manifest = Manifest.load(path)
    dec = manifest.decode
    info = {"artifact": str(path), "format": manifest.program.format, "backend": manifest.backend,
            "quantization": manifest.quantization, "segment_len": manifest.segment_len,
            "vocab_size": manifest.vocab_size, "max_batch": manifest.max_batch,
            "files": {k: v.bytes for k, v in manifest.files.items()},
            "state_bytes_batch1": sum(e.nbytes(1) for e in manifest.state),
            "parity_passed": None if manifest.parity is None else manifest.parity.passed,
            "parity": parity_status(manifest),
            "decode": None if dec is None else {"form": dec.form, "max_chunk": dec.max_chunk,
                                                "cache_in_place": dec.cache_in_place},
            "embedding_lookup": manifest.embedding_lookup}
    program_file = manifest.program_path()
    if manifest.program.format == "onnx":
        info["weights_bytes"] = _onnx_weights_bytes(program_file)
    else:
        memory = manifest.memory
        if memory is None:  # a manifest written before memory was recorded: measure the file
            from exporters.memory_plan import measure_memory
            memory = measure_memory(program_file)
        info["memory"] = memory
        info["weights_bytes"] = memory["weights_bytes"]
    return info


def print_artifact(info: dict) -> None:
    """Readable form of ``describe_artifact``."""
    print(f"artifact: {info['artifact']} ({info['format']}, {info['backend']}, "
          f"{info['quantization'] or 'no quantization'}; segments of {info['segment_len']}, vocab "
          f"{info['vocab_size']}, batch <= {info['max_batch']})")
    print(f"parity: {info['parity']}")
    if info["decode"] is not None:
        d = info["decode"]
        print(f"decode program: local attention {d['form'] or 'rows'}, up to {d['max_chunk']} tokens a call, cache "
              f"{'written in place' if d['cache_in_place'] else 'rows returned'}")
    for key, size in info["files"].items():
        print(f"  file {key:<15} {size:>14,} bytes")
    print(f"weights:                {info['weights_bytes']:>14,} bytes")
    lookup = info.get("embedding_lookup") or {}
    if lookup.get("dtype"):
        print(f"lookup table:           {lookup['bytes']:>14,} bytes ({lookup['dtype']} {lookup['shape']}"
              f"{', ' + lookup['scheme'] if lookup.get('scheme') else ''}; {lookup['ops']})")
    print(f"state (batch 1):        {info['state_bytes_batch1']:>14,} bytes")
    if "memory" in info:
        from exporters.memory_plan import format_memory
        for line in format_memory(info["memory"]):
            print(line)

"""``infini-export info ART`` for an artifact folder: files, weights, state and (ExecuTorch) planned memory."""
from __future__ import annotations

import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"


def is_artifact(path: str | Path) -> bool:
    """An artifact folder is recognised by its manifest.json."""
    return (Path(path) / MANIFEST_FILE).is_file()


def _state_bytes(manifest: dict, batch: int = 1) -> int:
    sizes = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4}
    total = 0
    for s in manifest["state"]:
        n = sizes.get(s["dtype"], 4)
        for d in s["shape"]:
            n *= batch if d == "batch" else int(d)
        total += n
    return total


def _onnx_weights_bytes(path: Path) -> int:
    """Bytes of the ONNX graph's initializers (its weights, quantized or not)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.raw_data else numpy_helper.to_array(init).nbytes
    return total


def describe_artifact(path: str | Path) -> dict:
    """The facts ``info`` prints, as a dict: format, quantization, files, weights, state, planned memory."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    program = manifest["program"]
    info = {"artifact": str(path), "format": program["format"], "backend": manifest["backend"],
            "quantization": manifest.get("quantization"), "segment_len": manifest["segment_len"],
            "vocab_size": manifest["vocab_size"], "max_batch": manifest["batch"]["max"],
            "files": {k: v["bytes"] for k, v in manifest["files"].items()},
            "state_bytes_batch1": _state_bytes(manifest), "parity_passed": (manifest.get("parity") or {}).get("passed"),
            "embedding_lookup": manifest.get("embedding_lookup")}
    program_file = path / manifest["files"][program["file"]]["path"]
    if program["format"] == "onnx":
        info["weights_bytes"] = _onnx_weights_bytes(program_file)
    else:
        memory = manifest.get("memory")
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
          f"{info['vocab_size']}, batch <= {info['max_batch']}; parity "
          f"{ {True: 'passed', False: 'FAILED', None: 'not recorded'}[info['parity_passed']]})")
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

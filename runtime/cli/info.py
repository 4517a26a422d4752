"""``info ART`` for an artifact folder: files, weights, state and (ExecuTorch) planned memory, read without torch."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ManifestError
from ..manifest import Manifest
from .onnx_weights import onnx_weights_bytes

MANIFEST_FILE = "manifest.json"


def is_artifact(path: str | Path) -> bool:
    """An artifact folder is recognised by its manifest.json."""
    return (Path(path) / MANIFEST_FILE).is_file()


def parity_status(manifest) -> str:
    """One line on the export's parity run: passed, failed (and why), or never run."""
    p = manifest.parity
    if p is None:
        return "never run (this artifact was not validated against its model)"
    if p.passed:
        return f"passed over {p.segments} segments"
    why = p.error or (p.failures[0] if p.failures else "")
    return f"FAILED ({why[:160]})" if why else "FAILED"


def describe_artifact(path: str | Path, measure_memory=None) -> dict:
    """The facts ``info`` prints, as a dict: format, quantization, files, weights, state, parity, decode form,
    planned memory.

    An ExecuTorch manifest written before planned memory was recorded has none; ``measure_memory(pte_path)``
    (the exporter's, which needs executorch) measures it where given, else the memory and weights are ``None``.
    """
    path = Path(path)
    if not is_artifact(path):
        raise ManifestError(f"{path} is not an artifact folder: expected {MANIFEST_FILE} in it")
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
        info["weights_bytes"] = onnx_weights_bytes(program_file)
    else:
        memory = manifest.memory
        if memory is None and measure_memory is not None:  # written before memory was recorded: measure the file
            memory = measure_memory(program_file)
        info["memory"] = memory
        info["weights_bytes"] = memory["weights_bytes"] if memory else None
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
    weights = info["weights_bytes"]
    print(f"weights:                {weights:>14,} bytes" if weights is not None else
          "weights:                not recorded in this manifest")
    lookup = info.get("embedding_lookup") or {}
    if lookup.get("dtype"):
        print(f"lookup table:           {lookup['bytes']:>14,} bytes ({lookup['dtype']} {lookup['shape']}"
              f"{', ' + lookup['scheme'] if lookup.get('scheme') else ''}; {lookup['ops']})")
    print(f"state (batch 1):        {info['state_bytes_batch1']:>14,} bytes")
    if info.get("memory"):
        for line in format_memory(info["memory"]):
            print(line)


def format_memory(memory: dict) -> list[str]:
    """Human-readable lines of the manifest's ``memory`` entry (the exporter's memory plan)."""
    lines = [f"weights (constants, all methods): {memory['weights_bytes']:>14,} bytes"]
    for name, m in memory["methods"].items():
        lines.append(f"method {name!r}: planned {m['planned_bytes']:,} bytes in {m['planned_buffers']} buffer(s); "
                     f"inputs {m['input_bytes']:,} B, outputs {m['output_bytes']:,} B")
    return lines


def main(args, measure_memory=None) -> int:
    """Run ``info`` for parsed arguments (``args.py``) on an artifact folder (``measure_memory``: see above)."""
    info = describe_artifact(args.path, measure_memory)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_artifact(info)
    return 0

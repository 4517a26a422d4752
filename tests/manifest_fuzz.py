"""Manifest fuzzing material: a realistic base manifest, an artifact folder full of traps beside an outside
folder holding the same program (so a confinement breach would succeed, not fail), and mutation strategies."""
import copy
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

from hypothesis import strategies as st

PROGRAM = bytes(range(256)) * 8  # the stand-in program file: only hashed, never parsed, in the fast fuzz
SHA = hashlib.sha256(PROGRAM).hexdigest()
STATE = [("memory.0", [2, 16, 16]), ("norm.0", [2, 16]), ("memory.1", [2, 16, 16]), ("norm.1", [2, 16])]


def base_manifest(program_path="model.onnx", sha=SHA, size=len(PROGRAM)) -> dict:
    """What the ONNX exporter writes for the tiny preset (2 layers, 2 heads of 16), minus provenance."""
    inputs = [{"name": "input_ids", "role": "ids", "dtype": "int64", "shape": ["batch", 16]}]
    outputs = [{"name": "logits", "role": "logits", "dtype": "float32", "shape": ["batch", 16, 256]}]
    state = []
    for name, dims in STATE:
        shape = ["batch", *dims]
        inputs.append({"name": f"past_{name}", "role": "state-in", "dtype": "float32", "shape": shape})
        outputs.append({"name": f"present_{name}", "role": "state-out", "dtype": "float32", "shape": list(shape)})
        state.append({"name": name, "input": f"past_{name}", "output": f"present_{name}", "dtype": "float32",
                      "shape": list(shape)})
    return {"format": "infini-export", "format_version": 1, "backend": "onnxruntime",
            "program": {"format": "onnx", "file": "program"}, "model": {"model": "InfiniTransformer"},
            "model_fingerprint": "f" * 64, "segment_len": 16, "vocab_size": 256,
            "batch": {"symbol": "batch", "min": 1, "max": 64}, "inputs": inputs, "outputs": outputs,
            "state": state, "initial_state": "zeros",
            "files": {"program": {"path": program_path, "sha256": sha, "bytes": size}}, "parity": None}


def graph_io(manifest: dict):
    """onnxruntime NodeArg look-alikes of the graph the base manifest describes (batch symbolic)."""
    types = {"int64": "tensor(int64)", "float32": "tensor(float)"}

    def args(ios):
        return [SimpleNamespace(name=io["name"], type=types[io["dtype"]],
                                shape=[d if isinstance(d, int) else "batch" for d in io["shape"]]) for io in ios]
    return args(manifest["inputs"]), args(manifest["outputs"])


def make_trap_folder(root: Path, program: bytes = PROGRAM) -> tuple[Path, Path]:
    """``root/art`` (the artifact folder) and ``root/outside`` (must never be read), with symlinks both ways."""
    art, out = root / "art", root / "outside"
    (art / "sub").mkdir(parents=True)
    out.mkdir()
    (art / "model.onnx").write_bytes(program)
    (art / "sub" / "model.onnx").write_bytes(program)
    (out / "model.onnx").write_bytes(program)
    os.symlink("model.onnx", art / "link_in")
    os.symlink("../outside/model.onnx", art / "link_out")
    os.symlink(out / "model.onnx", art / "link_abs")
    os.symlink("../outside", art / "dir_out")
    os.symlink("sub/../link_out", art / "link_chain")
    os.symlink("loop", art / "loop")
    os.mkfifo(art / "fifo")
    return art, out


def path_values(root: Path) -> list[str]:
    return ["../outside/model.onnx", str(root / "outside" / "model.onnx"), str(root / "art" / "model.onnx"),
            "link_out", "link_abs", "dir_out/model.onnx", "link_chain", "sub/../../outside/model.onnx",
            "sub/../model.onnx", "./model.onnx", "model.onnx/", "sub//model.onnx", "", ".", "..", "/", "link_in",
            "loop", "fifo", "sub", "sub/model.onnx", "sub\\model.onnx", "model.onnx\x00", "C:/model.onnx",
            "~/model.onnx", "%2e%2e/outside/model.onnx", "model.onnx", "missing.onnx", "mod\u00e9l.onnx", "a" * 2000,
            "a/" * 300 + "b", "manifest.json"]


def slots(doc, prefix=()):
    """Every position in a JSON document, as a key path."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += slots(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += slots(v, prefix + (i,))
    return out


BASE_SLOTS = slots(base_manifest())[1:]
_WORDS = ["batch", "float32", "float16", "int64", "bfloat16", "object", "onnx", "pte", "zeros", "program", "ids",
          "state-in", "state-out", "logits", "infini-export", "past_memory.0", "present_norm.1", "memory.0"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.sampled_from([0, 1, -1, 2, 15, 16, 17, 64, 256, 2**31, 2**63, 2**64, 200_000_000]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(_WORDS),
                    st.sampled_from(["0" * 64, SHA, SHA.upper(), SHA[:63], "g" * 64]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                     max_size=3), max_leaves=8)
dims = st.lists(st.one_of(st.sampled_from(["batch", 16, 2, 256]), scalars), min_size=0, max_size=5)


def mutations(paths: list[str]):
    """One edit: (op, slot, value); ops: set, delete, add a key or item, and focused path/shape/hash edits."""
    slot = st.sampled_from(BASE_SLOTS)
    file_slot = st.sampled_from([("files", "program", "path"), ("files", "decode", "path"),
                                 ("files", "initial_state", "path")])
    shape_slot = st.sampled_from([s for s in BASE_SLOTS if s and s[-1] == "shape"])
    dim_slot = st.sampled_from([s for s in BASE_SLOTS if len(s) > 1 and s[-2] == "shape"])
    return st.one_of(
        st.tuples(st.just("set"), slot, values),
        st.tuples(st.just("delete"), slot, st.none()),
        st.tuples(st.just("add"), slot, values),
        st.tuples(st.just("set"), file_slot, st.sampled_from(paths) | st.text(alphabet="./ab\\\x00~", max_size=12)),
        st.tuples(st.just("refer"), st.sampled_from([("program", "file"), ("initial_state",)]),
                  st.sampled_from(["decode", "initial_state", "program", "missing"])),
        st.tuples(st.just("set"), shape_slot, dims),
        st.tuples(st.just("set"), dim_slot, scalars),
        st.tuples(st.just("set"), st.sampled_from([("files", "program", "sha256"), ("files", "program", "bytes")]),
                  scalars),
    )


def apply(doc: dict, edits) -> dict:
    """A mutated deep copy of ``doc``; an edit whose slot no longer exists is skipped."""
    doc = copy.deepcopy(doc)
    for op, slot, value in edits:
        if op == "refer":  # point a manifest section at a files entry, adding the entry if need be
            files = doc.get("files") if isinstance(doc.get("files"), dict) else None
            if files is not None and value != "missing":
                files.setdefault(value, {"path": "sub/model.onnx", "sha256": SHA, "bytes": len(PROGRAM)})
            if slot == ("initial_state",):
                doc["initial_state"] = {"file": value}
            elif isinstance(doc.get("program"), dict):
                doc["program"]["file"] = value
            continue
        parent = doc
        for key in slot[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            last = slot[-1]
            if isinstance(parent, dict) and (op != "delete" or last in parent):
                if op == "add":
                    parent[f"{last}_extra"] = value
                elif op == "delete":
                    del parent[last]
                else:
                    parent[last] = value
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                if op == "add":
                    parent.insert(last, value)
                elif op == "delete":
                    del parent[last]
                else:
                    parent[last] = value
        if slot[:1] == ("files",) and len(slot) == 3 and op == "set" and isinstance(doc.get("files"), dict) \
                and slot[1] not in doc["files"]:
            doc["files"][slot[1]] = {"path": value, "sha256": SHA, "bytes": len(PROGRAM)}
    return doc

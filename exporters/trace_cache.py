"""A folder of traced ONNX programs: ``torch.onnx.export`` of the same module with the same inputs runs once.

Exports of one checkpoint in several variants (float32, int8, int4, another attention-block size) trace the same
three programs; quantization and our graph rewrites come after the trace. With a cache folder
(``ExportOptions.trace_cache``, by default ``$INFINI_EXPORT_TRACE_CACHE``; off when neither is set) the first export
keeps each traced program, as torch.onnx and the onnxscript optimizer left it, and later exports of the same
program read it back instead of tracing.

The key is everything the trace reads: every parameter and buffer (bytes, dtype, shape, which ones are tied), every
other attribute of every submodule (tensors by their bytes, other values by their ``repr``), the source of every
submodule's class and of this package and ``infini_export``, the example inputs, the I/O names, the dynamic
shapes, the opset, the translation table and the torch / onnx / onnxscript / onnx_ir versions. A value the key
cannot describe exactly (an object whose ``repr`` carries its address) makes a new key every time: a miss, never
a wrong program. Files are written whole (a temporary name, then a rename), and a program's trace holds its key's
lock (:func:`claim`): concurrent exports share the folder, and of two that need one program, one traces it while the
other waits and reads it back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import os
import sys
from importlib.metadata import version
from pathlib import Path

import onnx
import torch
from filelock import FileLock

ENV = "INFINI_EXPORT_TRACE_CACHE"
_PACKAGES = ("exporters", "infini_export")
_SKIP = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}


def cache_folder(value: str | os.PathLike | None) -> Path | None:
    """The cache folder an export uses: ``value``, else ``$INFINI_EXPORT_TRACE_CACHE``, else None (no cache)."""
    value = value if value is not None else os.environ.get(ENV) or None
    return None if value is None else Path(value)


@functools.cache
def _sources() -> bytes:
    """This package's and ``infini_export``'s sources and the tracing libraries' versions (once per process)."""
    h = hashlib.sha256()
    for package in _PACKAGES:
        root = Path(sys.modules[package].__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    for dist in ("torch", "onnx", "onnxscript", "onnx_ir"):
        h.update(f"{dist}={version(dist.replace('_', '-'))}".encode())
    return h.digest()


def _value(h, value, seen: set, depth: int = 0) -> None:
    """Feed ``value`` to the hash: tensors by their bytes, containers and objects by their parts, the rest by repr."""
    if isinstance(value, torch.Tensor):
        t = value.detach().contiguous().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, (str, int, float, bool, type(None), torch.dtype, torch.device)):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}]".encode())
        for v in value:
            _value(h, v, seen, depth + 1)
    elif isinstance(value, dict):
        h.update(f"dict[{len(value)}]".encode())
        for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])):
            h.update(repr(k).encode())
            _value(h, v, seen, depth + 1)
    elif isinstance(value, torch.nn.Module):  # a submodule kept as a plain attribute: named by its path elsewhere
        h.update(f"module:{type(value).__qualname__}".encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"dc:{type(value).__qualname__}".encode())
        _value(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, seen, depth + 1)
    elif hasattr(value, "__dict__") and not callable(value) and id(value) not in seen and depth < 8:
        seen.add(id(value))
        h.update(f"obj:{type(value).__module__}.{type(value).__qualname__}".encode())
        _value(h, vars(value), seen, depth + 1)
    else:  # functions, classes and the like: by repr (an address in it makes the key unique: a miss)
        h.update(f"{type(value).__qualname__}:{value!r}".encode())


def trace_key(module: torch.nn.Module, example: tuple, **call) -> str:
    """The key of tracing ``module`` on ``example`` with torch.onnx.export's keyword arguments ``call``."""
    h = hashlib.sha256(_sources())
    sources: dict[str, bytes] = {}
    tensors: dict[tuple, str] = {}  # storage view -> first name: which parameters and buffers are tied
    for kind, items in (("p", module.named_parameters(remove_duplicate=False)),
                        ("b", module.named_buffers(remove_duplicate=False))):
        for name, t in items:
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            first = tensors.setdefault(ptr, name)
            h.update(f"{kind}:{name}={first}".encode())
            if first == name:
                _value(h, t, set())
    for name, sub in module.named_modules(remove_duplicate=False):
        cls = type(sub)
        h.update(f"m:{name}:{cls.__module__}.{cls.__qualname__}".encode())
        if cls.__module__ not in sources:
            try:
                sources[cls.__module__] = inspect.getsource(sys.modules[cls.__module__]).encode()
            except (OSError, TypeError, KeyError):
                sources[cls.__module__] = b"no-source"
        h.update(sources[cls.__module__])
        _value(h, {k: v for k, v in vars(sub).items() if k not in _SKIP and "hook" not in k}, set())
    _value(h, example, set())
    for name, value in sorted(call.items()):
        h.update(name.encode())
        if name == "custom_translation_table" and value:
            value = {str(op): f"{fn.__module__}.{fn.__qualname__}" for op, fn in value.items()}
        _value(h, repr(value) if name == "dynamic_shapes" else value, set())
    return h.hexdigest()


@contextlib.contextmanager
def claim(folder: Path, key: str):
    """Hold ``key``'s lock, the file ``.<key>.lock`` beside the program (another export holding it is tracing that
    program: wait for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{key}.lock")):
        yield


def load(folder: Path, key: str) -> onnx.ModelProto | None:
    """The program kept under ``key`` (its weights with it), or None."""
    path = folder / f"{key}.onnx"
    return onnx.load(str(path)) if path.is_file() else None


def store(folder: Path, key: str, model: onnx.ModelProto) -> None:
    """Keep ``model`` (weights inside, or beside it in ``<key>.onnx.data`` past 2 GB) under ``key``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    big = model.ByteSize() > 1_800_000_000
    onnx.save(model, str(tmp), save_as_external_data=big, location=f"{key}.onnx.data" if big else None)
    tmp.replace(folder / f"{key}.onnx")

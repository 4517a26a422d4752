"""The manifest's types and cross-references, checked before any field is used (no file system access)."""
from __future__ import annotations

import re
import reprlib

from .errors import ManifestError
from .paths import check_relative
from .tokenizer_section import check_text_sections

FORMAT = "infini-export"
FORMAT_VERSION = 1
ROLES = ("ids", "state-in", "logits", "state-out")
BATCH = "batch"  # the one symbolic dim: the leading axis of ids, logits and every state tensor
DECODE_SYMBOLS = (BATCH, "tokens")  # the decode program's free dims: batch and the chunk length
DTYPE_BYTES = {"bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "float16": 2, "float32": 4,
               "float64": 8}
MAX_DIM = (1 << 63) - 1
MAX_RANK = 16
REQUIRED = ("format", "format_version", "backend", "segment_len", "vocab_size", "inputs", "outputs", "state",
            "files", "program", "model_fingerprint")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _fail(where: str, value, expected: str):
    raise ManifestError(f"manifest {where} is {reprlib.repr(value)}; expected {expected}")


def _int(where: str, value, lo: int = 0, hi: int = MAX_DIM) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        _fail(where, value, f"an integer in [{lo}, {hi}]")
    return value


def _str(where: str, value, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
        _fail(where, value, "a non-empty string" if pattern is None else f"a string matching {pattern.pattern}")
    return value


def _typed(where: str, value, kind: type):
    if not isinstance(value, kind):
        _fail(where, value, f"a JSON {'object' if kind is dict else 'array'}")
    return value


def _shape(where: str, value) -> list:
    _typed(where, value, list)
    if not 1 <= len(value) <= MAX_RANK or value[0] != BATCH:
        _fail(where, value, f"a list of 1 to {MAX_RANK} dims led by {BATCH!r}")
    for i, d in enumerate(value[1:], 1):
        _int(f"{where}[{i}]", d)
    return value


def _ios(where: str, value, roles: tuple[str, str]) -> list[dict]:
    _typed(where, value, list)
    if not value:
        _fail(where, value, "a non-empty list")
    for i, io in enumerate(value):
        at = f"{where}[{i}]"
        _typed(at, io, dict)
        for key in ("name", "role", "dtype", "shape"):
            if key not in io:
                _fail(at, io, f"an object with {key!r}")
        _str(f"{at}.name", io["name"])
        want = roles[0] if i == 0 else roles[1]  # ids/logits first, then the state in manifest order
        if io["role"] != want:
            _fail(f"{at}.role", io["role"], repr(want))
        if not isinstance(io["dtype"], str) or io["dtype"] not in DTYPE_BYTES:
            _fail(f"{at}.dtype", io["dtype"], f"one of {sorted(DTYPE_BYTES)}")
        _shape(f"{at}.shape", io["shape"])
    names = [io["name"] for io in value]
    if len(set(names)) != len(names):
        _fail(f"{where} names", names, "unique names")
    return value


def _files(value) -> dict:
    _typed("files", value, dict)
    for key, entry in value.items():
        at = f"files.{key}"
        _str(f"{at} key", key)
        _typed(at, entry, dict)
        check_relative(f"{at}.path", entry.get("path"))
        _str(f"{at}.sha256", entry.get("sha256"), _SHA256)
        if "bytes" in entry:
            _int(f"{at}.bytes", entry["bytes"])
    return value


def _file_key(where: str, value, files: dict, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or value not in files:
        _fail(where, value, f"the key of an entry in files (one of {sorted(files)})")


def check_manifest(d) -> None:
    """Raise ``ManifestError`` (or ``UnsafePathError`` for a path) unless ``d`` is a well-typed, consistent
    manifest: every field the runtime reads has the type, range and cross-references it relies on."""
    if not isinstance(d, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise ManifestError(f"manifest lacks the keys {missing}; expected all of {list(REQUIRED)}")
    if d["format"] != FORMAT:
        _fail("format", d["format"], repr(FORMAT))
    version = d["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ManifestError(f"manifest format_version {reprlib.repr(version)} is not supported: this runtime reads "
                            f"versions 1..{FORMAT_VERSION}; upgrade infini-export to open it")
    _str("backend", d["backend"])
    _str("model_fingerprint", d["model_fingerprint"])
    seg, vocab = _int("segment_len", d["segment_len"], 1), _int("vocab_size", d["vocab_size"], 1)
    batch = _typed("batch", d.get("batch", {}), dict)
    if batch.get("symbol", BATCH) != BATCH:
        _fail("batch.symbol", batch["symbol"], repr(BATCH))
    hi = _int("batch.max", batch.get("max", 1 << 30), 1)
    _int("batch.min", batch.get("min", 1), 1, hi)
    files = _files(d["files"])
    program = _typed("program", d["program"], dict)
    _str("program.format", program.get("format"))
    if "file" not in program:
        _fail("program", program, "an object with 'file' (a key of files, or null for an in-memory model)")
    _file_key("program.file", program["file"], files, allow_none=True)
    if program.get("method") is not None:  # null: a program file without the full-logits method
        _str("program.method", program["method"])
    init = d.get("initial_state", "zeros")
    if init != "zeros":
        _typed("initial_state", init, dict)
        _file_key("initial_state.file", init.get("file"), files)

    inputs = _ios("inputs", d["inputs"], ("ids", "state-in"))
    outputs = _ios("outputs", d["outputs"], ("logits", "state-out"))
    if inputs[0]["dtype"] != "int64" or inputs[0]["shape"] != [BATCH, seg]:
        _fail("inputs[0] (ids)", inputs[0], f"int64 of shape {[BATCH, seg]} (segment_len={seg})")
    if outputs[0]["shape"] != [BATCH, seg, vocab]:
        _fail("outputs[0].shape (logits)", outputs[0]["shape"], f"{[BATCH, seg, vocab]} (segment_len, vocab_size)")
    state = _typed("state", d["state"], list)
    if not state or len(state) != len(inputs) - 1 or len(state) != len(outputs) - 1:
        raise ManifestError(f"manifest lists {len(state)} state tensors, {len(inputs) - 1} state inputs and "
                            f"{len(outputs) - 1} state outputs; expected the same number, at least one")
    for i, (s, ins, outs) in enumerate(zip(state, inputs[1:], outputs[1:])):
        at = f"state[{i}]"
        _typed(at, s, dict)
        _str(f"{at}.name", s.get("name"))
        _shape(f"{at}.shape", s.get("shape"))
        if s.get("input") != ins["name"] or s.get("output") != outs["name"]:
            _fail(f"{at} input/output", [s.get("input"), s.get("output")],
                  f"{[ins['name'], outs['name']]}, the graph I/O at the same position")
        if s.get("dtype") != ins["dtype"] or s.get("shape") != ins["shape"] or outs["dtype"] != ins["dtype"] \
                or outs["shape"] != ins["shape"]:
            _fail(f"{at} dtype/shape", [s.get("dtype"), s.get("shape")],
                  f"the dtype and shape of its input and output ({ins['dtype']} {ins['shape']})")
    names = [s["name"] for s in state]
    if len(set(names)) != len(names):
        _fail("state names", names, "unique names")

    if "decode" in d:
        _check_decode(d["decode"], files, seg, vocab, names)
    if d.get("last_logits") is not None:
        _check_last_logits(d["last_logits"], files, inputs, outputs, vocab)
    if program.get("method", "") is None and (d.get("decode") is None or d.get("last_logits") is None):
        _fail("program.method", None, "a method name: a program without its full-logits method needs the decode "
                                      "and the last-token programs (all logits come from decode calls)")
    if "shared_weights" in d:
        _check_shared_weights(d["shared_weights"], files)
    if d.get("embedding_lookup") is not None:
        _check_embedding_lookup(d["embedding_lookup"])
    if d.get("parity") is not None:
        parity = _typed("parity", d["parity"], dict)
        if not isinstance(parity.get("passed"), bool):
            _fail("parity.passed", parity.get("passed"), "true or false")
    for key in ("exporter", "model", "memory"):
        if d.get(key) is not None:
            _typed(key, d[key], dict)
    check_text_sections(d)  # tokenizer, generation


def _decode_ios(where: str, value, first: tuple) -> list[dict]:
    _typed(where, value, list)
    if len(value) < len(first):
        _fail(where, value, f"a list starting with the roles {list(first)}")
    for i, io in enumerate(value):
        at = f"{where}[{i}]"
        _typed(at, io, dict)
        _str(f"{at}.name", io.get("name"))
        if not isinstance(io.get("dtype"), str) or io["dtype"] not in DTYPE_BYTES:
            _fail(f"{at}.dtype", io.get("dtype"), f"one of {sorted(DTYPE_BYTES)}")
        shape = _typed(f"{at}.shape", io.get("shape"), list)
        if not 1 <= len(shape) <= MAX_RANK or any(
                not (d in DECODE_SYMBOLS or (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM))
                for d in shape):
            _fail(f"{at}.shape", shape, f"1 to {MAX_RANK} dims, each an integer >= 0 or one of {DECODE_SYMBOLS}")
        if i < len(first) and io.get("role") != first[i]:
            _fail(f"{at}.role", io.get("role"), repr(first[i]))
    names = [io["name"] for io in value]
    if len(set(names)) != len(names):
        _fail(f"{where} names", names, "unique names")
    return value


def _check_decode(dec, files: dict, seg: int, vocab: int, segment_names: list) -> None:
    """The decode section: I/O in the order a runtime feeds it (ids, position, state, cache; logits, state, cache
    rows or whole caches), entries that point at that I/O, the segment state's names among the decode state's."""
    _typed("decode", dec, dict)
    _program_ref("decode.program", dec.get("program"), files)
    if dec.get("max_tokens") != seg:
        _fail("decode.max_tokens", dec.get("max_tokens"), f"segment_len ({seg})")
    chunk = dec.get("max_chunk", seg)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= seg:
        _fail("decode.max_chunk", chunk, f"an integer in [1, segment_len ({seg})]")
    if dec.get("form") is not None:
        _str("decode.form", dec["form"])
    inputs = _decode_ios("decode.inputs", dec.get("inputs"), ("ids", "position"))
    outputs = _decode_ios("decode.outputs", dec.get("outputs"), ("logits",))
    if dec.get("position") != inputs[1]["name"] or inputs[1]["dtype"] != "int64" or inputs[1]["shape"] != [1]:
        _fail("decode.position", dec.get("position"), f"{inputs[1]['name']!r}, an int64 input of shape [1]")
    if outputs[0]["shape"] != [BATCH, "tokens", vocab]:
        _fail("decode.outputs[0].shape (logits)", outputs[0]["shape"], f"{[BATCH, 'tokens', vocab]}")
    state = _typed("decode.state", dec.get("state"), list)
    cache = _typed("decode.cache", dec.get("cache"), list)
    if len(inputs) != 2 + len(state) + len(cache) or len(outputs) != 1 + len(state) + len(cache):
        raise ManifestError(f"manifest decode section lists {len(state)} state and {len(cache)} cache tensors for "
                            f"{len(inputs)} inputs and {len(outputs)} outputs; expected 2 + and 1 + their number")
    # the cache outputs: every one the chunk's rows (cache-rows) or every one the whole cache (cache-out)
    cache_out = "cache-out" if cache and outputs[1 + len(state)].get("role") == "cache-out" else "cache-rows"
    if "cache_in_place" in dec and dec["cache_in_place"] is not (cache_out == "cache-out" and bool(cache)):
        _fail("decode.cache_in_place", dec["cache_in_place"],
              f"{cache_out == 'cache-out' and bool(cache)} (the cache outputs' role is {cache_out!r})")
    for kind, entries, ins, outs, roles in (("state", state, inputs[2:2 + len(state)], outputs[1:1 + len(state)],
                                             ("state-in", "state-out")),
                                            ("cache", cache, inputs[2 + len(state):], outputs[1 + len(state):],
                                             ("cache-in", cache_out))):
        for i, (e, io_in, io_out) in enumerate(zip(entries, ins, outs)):
            at = f"decode.{kind}[{i}]"
            _typed(at, e, dict)
            _str(f"{at}.name", e.get("name"))
            shape = _shape(f"{at}.shape", e.get("shape"))
            if e.get("input") != io_in["name"] or e.get("output") != io_out["name"] or \
                    (io_in.get("role"), io_out.get("role")) != roles:
                _fail(f"{at} input/output", [e.get("input"), e.get("output")],
                      f"{[io_in['name'], io_out['name']]} with roles {list(roles)}, the I/O at the same position")
            if e.get("dtype") != io_in["dtype"] or shape != io_in["shape"]:
                _fail(f"{at} dtype/shape", [e.get("dtype"), shape], f"its input's ({io_in['dtype']} {io_in['shape']})")
            if kind == "cache" and (len(shape) != 4 or e.get("axis") != 2 or shape[2] != seg):
                _fail(f"{at}", e, f"a (batch, heads, {seg}, head_dim) cache written along axis 2")
    names = [e["name"] for e in state]
    missing = sorted(set(segment_names) - set(names))
    if missing:
        _fail("decode.state names", names, f"the segment state's names {missing} among them (the hand-over at a "
                                            "segment boundary)")


def _program_ref(where: str, program, files: dict) -> dict:
    """A program reference: ``{"format", "file"}`` (a key of files, or null in memory), optionally ``"method"``."""
    _typed(where, program, dict)
    _str(f"{where}.format", program.get("format"))
    _file_key(f"{where}.file", program.get("file"), files, allow_none=True)
    if "method" in program:
        _str(f"{where}.method", program["method"])
    return program


def _check_last_logits(last, files: dict, inputs: list, outputs: list, vocab: int) -> None:
    """The last-token program: the segment step's inputs and state outputs, logits of shape (batch, 1, vocab)."""
    _typed("last_logits", last, dict)
    _program_ref("last_logits.program", last.get("program"), files)
    if last.get("inputs") != inputs:
        _fail("last_logits.inputs", last.get("inputs"), "the segment step's inputs (same names, order, shapes)")
    outs = _typed("last_logits.outputs", last.get("outputs"), list)
    if outs[1:] != outputs[1:]:
        _fail("last_logits.outputs[1:]", outs[1:], "the segment step's state outputs (same names, order, shapes)")
    want = {**outputs[0], "shape": [BATCH, 1, vocab]}
    if not outs or outs[0] != want:
        _fail("last_logits.outputs[0] (logits)", outs[0] if outs else outs, f"{want} (the last token's logits)")


def _check_shared_weights(sw, files: dict) -> None:
    _typed("shared_weights", sw, dict)
    _file_key("shared_weights.file", sw.get("file"), files)
    graphs = _typed("shared_weights.graphs", sw.get("graphs"), dict)
    for key, entries in graphs.items():
        _file_key("shared_weights.graphs key", key, files)
        for i, e in enumerate(_typed(f"shared_weights.graphs.{key}", entries, list)):
            at = f"shared_weights.graphs.{key}[{i}]"
            if not (isinstance(e, list) and len(e) == 5 and isinstance(e[3], str) and e[3] in DTYPE_BYTES
                    and isinstance(e[4], list)):
                _fail(at, e, "[name, offset, length, dtype, dims]")
            _str(f"{at} name", e[0])
            _int(f"{at} offset", e[1])
            _int(f"{at} length", e[2])
            for d in e[4]:
                _int(f"{at} dims", d)


def _check_embedding_lookup(lookup) -> None:
    """What the token lookup's table is stored as (``dtype``, ``bits``, ...); ``tensors`` names its initializers."""
    _typed("embedding_lookup", lookup, dict)
    if lookup.get("dtype") is not None:
        _str("embedding_lookup.dtype", lookup["dtype"])
    for i, name in enumerate(_typed("embedding_lookup.tensors", lookup.get("tensors", []), list)):
        _str(f"embedding_lookup.tensors[{i}]", name)

"""Our runtime against the peer a user would pick for a small transformer on a CPU: onnxruntime-genai, on the Llama
twin of one of our presets (same widths, depth, heads, SwiGLU width, vocabulary and tied head; random weights),
built with onnxruntime-genai's own model builder, fp32 and int4.

Each side runs in a process of its own (``benchmarks.peer_child``), so its peak RSS is its own; the processes
alternate round by round (the order swapped every round), so both sides see the same machine load, and the
comparison is the ratio of the two sides within a round. Between the processes of a round the parent measures the
machine's read bandwidth with a two-thread read-only kernel (numpy sums), against which our fp32 decode's bytes per
token are set.

A context ``P+T`` is P tokens then T more: ours streams P (whole segments through the last-token program), then T
through the decode program, so our next token is at in-segment position T whatever P is (a decode call's cost
depends on that position, not on P); theirs appends all P + T tokens to its K/V cache (in chunks of ``chunk``
tokens, as onnxruntime-genai's chunked prefill does), and its decode reads them all.

onnxruntime-genai and transformers are benchmark dependencies only: they live in their own environment
(``--peer-python``), never in this project's runtime.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .proc import log

ROOT = Path(__file__).resolve().parents[1]  # the source tree: the children's working folder and import path

SIDES = ("ours", "theirs")
PRECISIONS = ("fp32", "int4")


def llama_config(cfg, max_positions: int = 36864) -> dict:
    """The ``transformers.LlamaConfig`` keyword arguments of the Llama twin of ``cfg`` (an ``InfiniConfig``): same
    vocabulary, width, depth, heads (no grouping), head size, SwiGLU width, RMSNorm epsilon, RoPE base and tied
    head. What ours has that it lacks: the compressive memory's per-head gate (``n_heads`` scalars a layer)."""
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_heads, "head_dim": cfg.d_head, "max_position_embeddings": max_positions,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": float(cfg.rope_base), "hidden_act": "silu",
            "tie_word_embeddings": bool(cfg.tie_embeddings), "attention_bias": False, "mlp_bias": False,
            "bos_token_id": 1, "eos_token_id": 2}


def llama_parameters(llama: dict) -> int:
    """Parameters of a ``LlamaForCausalLM`` with these keyword arguments (no biases)."""
    d, f, v = llama["hidden_size"], llama["intermediate_size"], llama["vocab_size"]
    q = llama["num_attention_heads"] * llama["head_dim"]
    kv = llama["num_key_value_heads"] * llama["head_dim"]
    layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
    head = 0 if llama["tie_word_embeddings"] else v * d
    return v * d + llama["num_hidden_layers"] * layer + d + head


def parse_contexts(text: str) -> list[tuple[int, int]]:
    """``"1K,4K+1K,16K+1K"`` -> ``[(0, 1024), (4096, 1024), (16384, 1024)]``: (prefix, tail) per context."""
    from runtime.measure import parse_length

    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        parts = [parse_length(p) for p in item.split("+")]
        if len(parts) > 2 or not all(p > 0 for p in parts):
            raise ValueError(f"{item!r}: expected LENGTH or PREFIX+TAIL, e.g. 16K+1K")
        out.append((0, parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return out


def context_label(prefix: int, tail: int) -> str:
    from runtime.measure import format_length

    return format_length(tail) if not prefix else f"{format_length(prefix)}+{format_length(tail)}"


def read_bandwidth(nbytes: int = 512 << 20, threads: int = 2, reps: int = 5) -> float:
    """Bytes/s the machine reads with ``threads`` threads, each summing its share of one large float32 array (a
    read-only kernel: numpy releases the GIL in the reduction); the best of ``reps``."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    best = float("inf")
    for _ in range(reps):
        barrier = threading.Barrier(threads + 1)

        def work(x):
            barrier.wait()
            x.sum()
        pool = [threading.Thread(target=work, args=(p,)) for p in parts]
        for t in pool:
            t.start()
        t0 = time.perf_counter()
        barrier.wait()
        for t in pool:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def decode_bytes(cfg, precision_bytes: float, cache_rows: int, memory: bool) -> dict:
    """Bytes one decode token reads: every parameter once (the tied table through the LM head), the K/V cache's
    valid rows and, for ours, the compressive memory and its norm (float32)."""
    llama = llama_config(cfg)
    weights = llama_parameters(llama) * precision_bytes
    cache = 2 * cfg.n_layers * cfg.n_heads * cfg.d_head * cache_rows * 4
    state = cfg.n_layers * cfg.n_heads * (cfg.d_head * cfg.d_head + cfg.d_head) * 4 if memory else 0
    return {"weights": int(weights), "cache": int(cache), "state": int(state), "total": int(weights + cache + state)}


def _child(cmd: str, job: dict, python: str, env: dict | None = None) -> dict:
    """Run ``benchmarks.peer_child CMD JOB`` with ``python``; its progress goes to this terminal, its last stdout
    line is the JSON result."""
    import subprocess

    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([python, "-m", "benchmarks.peer_child", cmd, json.dumps(job)], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"peer_child {cmd} failed (exit {proc.returncode}): {proc.stdout[-800:]}")
    return json.loads(lines[-1])


def ensure_theirs(cfg, preset: str, cache: Path, precision: str, python: str, threads: int, log=log) -> Path:
    """onnxruntime-genai's build of the Llama twin at ``precision`` (reused when present)."""
    out = cache / preset / f"theirs-{precision}"
    if not (out / "genai_config.json").is_file():
        log(f"building the Llama twin of {preset} with onnxruntime-genai's model builder ({precision})")
        extra = {"accuracy_level": 4, "block_size": 32} if precision == "int4" else {}
        job = {"llama": llama_config(cfg), "folder": str(cache / preset / "llama"), "out": str(out),
               "precision": precision, "threads": threads, "extra_options": extra}
        res = _child("build", job, python)
        log(f"built in {res['seconds_builder']:.0f} s: {sum(res['files'].values()) / 1e6:.1f} MB")
    return out


def export_code_hash() -> str:
    """sha256 of the exporter's and the model's source files: what decides the graphs we export."""
    import hashlib

    import exporters
    import infini_export
    digest = hashlib.sha256()
    for package in (exporters, infini_export):
        for path in sorted(Path(package.__file__).parent.rglob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_ours(preset: str, cache: Path, precision: str, log=log) -> Path:
    """Our ONNX export of ``preset`` (random weights, seed 0, one parity segment) at ``precision``, reused when
    present and made by the same exporter code (``export_code_hash``); exported in a process of its own."""
    out = cache / preset / f"ours-{precision}"
    stamp, code = out.parent / f"ours-{precision}.code", export_code_hash()
    current = (out / "manifest.json").is_file() and stamp.is_file() and stamp.read_text() == code
    if not current:
        why = "the exporter's code changed since the cached export" if (out / "manifest.json").is_file() else \
            "with parity over one segment"
        log(f"exporting {preset} ({precision}), {why}: a few minutes at 110M")
        if out.exists():
            shutil.rmtree(out)
        _child("export", {"preset": preset, "out": str(out), "quantize": None if precision == "fp32" else precision},
               sys.executable)
        stamp.write_text(code)
    return out


def graph_nodes(path: Path) -> dict:
    """Node count and the commonest operators of an ONNX graph (as stored, before onnxruntime's optimizations)."""
    import collections

    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in g.node)
    return {"nodes": len(g.node), "ops": dict(ops.most_common(12))}


def run(preset: str, *, contexts: list[tuple[int, int]], precisions=PRECISIONS, rounds: int = 2,
        new_tokens: int = 32, threads: int = 2, chunk: int = 2048, peer_python: str, cache: Path,
        log=log, on_precision=None) -> dict:
    """Per precision: build / export both sides, then ``rounds`` alternating rounds (the order swapped every
    round); ``on_precision(record)`` after each precision (the record so far). Returns the JSON record."""
    from infini_export import InfiniConfig

    cfg = InfiniConfig.from_name(preset)
    t_start = time.time()
    record = {"preset": preset, "config": cfg.to_dict(), "llama": llama_config(cfg),
              "llama_parameters": llama_parameters(llama_config(cfg)),
              "contexts": [context_label(p, t) for p, t in contexts], "context_tokens": [p + t for p, t in contexts],
              "precisions": [], "rounds": rounds, "new_tokens": new_tokens, "threads": threads, "their_chunk": chunk,
              "loadavg_start": [round(x, 2) for x in os.getloadavg()],
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
              "read_bandwidth_bytes_s": {}, "models": {}, "runs": {}, "graphs": {}, "files_bytes": {},
              "versions": _versions(peer_python)}
    env_ours = {**os.environ, "INFINI_EXPORT_NO_TORCH": "1"}
    for prec in precisions:
        models = {"theirs": ensure_theirs(cfg, preset, cache, prec, peer_python, threads, log=log),
                  "ours": ensure_ours(preset, cache, prec, log=log)}
        base = {"contexts": contexts, "new_tokens": new_tokens, "threads": threads, "label": prec,
                "vocab": cfg.vocab_size}
        jobs = {"ours": (base | {"artifact": str(models["ours"]), "chunk": 16 * cfg.segment_len}, sys.executable,
                         env_ours),
                "theirs": (base | {"model": str(models["theirs"]), "chunk": chunk}, peer_python, None)}
        for side in SIDES:
            record["runs"][f"{side}-{prec}"] = []
            record["models"][f"{side}-{prec}"] = str(models[side])
            record["files_bytes"][f"{side}-{prec}"] = sum(
                f.stat().st_size for f in models[side].iterdir() if f.is_file() and f.suffix in (".onnx", ".data", ".bin"))
        record["graphs"][f"ours-{prec}"] = graph_nodes(models["ours"] / "decode.onnx")
        record["graphs"][f"theirs-{prec}"] = graph_nodes(models["theirs"] / "model.onnx")
        record["read_bandwidth_bytes_s"][prec] = bws = []
        for r in range(rounds):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                job, python, env = jobs[side]
                t0 = time.perf_counter()
                res = _child(side, job, python, env=env)
                res["round"] = r
                record["runs"][f"{side}-{prec}"].append(res)
                log(f"{prec} round {r + 1}/{rounds} {side}: " + ", ".join(
                    f"{context_label(c['prefix'], c['tail'])} {c['decode_ms_median']:.1f} ms/token"
                    for c in res["contexts"]) + f"; peak RSS {res['peak_rss_mb']:.0f} MB "
                    f"({time.perf_counter() - t0:.0f} s)")
            bws.append(read_bandwidth(threads=threads))  # after each round: the load its rounds saw
            log(f"read bandwidth, {threads} threads: {bws[-1] / 1e9:.1f} GB/s")
        record["precisions"].append(prec)
        record["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        record["minutes"] = round((time.time() - t_start) / 60, 1)
        record["summary"] = summarize(record)
        record["bandwidth"] = bandwidth_fraction(record, cfg)
        if on_precision:
            on_precision(record)
    return record


def _versions(peer_python: str) -> dict:
    from .machine import versions

    import subprocess

    out = versions()
    code = ("import json, importlib.metadata as m; print(json.dumps({k: m.version(k) for k in "
            "('onnxruntime-genai', 'onnxruntime', 'transformers', 'torch')}))")
    res = subprocess.run([peer_python, "-c", code], capture_output=True, text=True)
    out["peer"] = json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr[-300:]}
    return out


def summarize(record: dict) -> dict:
    """Per precision and context: each side's median over rounds, and the median of the per-round ratios
    (theirs / ours for ms per token: above 1 means ours is faster; ours / theirs for prefill tokens/s)."""
    out = {}
    for prec in record["precisions"]:
        ours, theirs = record["runs"][f"ours-{prec}"], record["runs"][f"theirs-{prec}"]
        rows = []
        for i, label in enumerate(record["contexts"]):
            o = [run["contexts"][i] for run in ours]
            t = [run["contexts"][i] for run in theirs]
            pairs = list(zip(o, t))  # round r of each side
            rows.append({
                "context": label, "tokens": record["context_tokens"][i],
                "ours_ms": float(np.median([x["decode_ms_median"] for x in o])),
                "theirs_ms": float(np.median([x["decode_ms_median"] for x in t])),
                "decode_ratio": float(np.median([b["decode_ms_median"] / a["decode_ms_median"] for a, b in pairs])),
                "ours_prefill_tok_s": float(np.median([x["prefill_tok_s"] for x in o])),
                "theirs_prefill_tok_s": float(np.median([x["prefill_tok_s"] for x in t])),
                "prefill_ratio": float(np.median([a["prefill_tok_s"] / b["prefill_tok_s"] for a, b in pairs]))})
        out[prec] = {"contexts": rows, "ours_peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
                     "theirs_peak_rss_mb": max(r["peak_rss_mb"] for r in theirs)}
    return out


def bandwidth_fraction(record: dict, cfg) -> dict:
    """Our fp32 decode's achieved read rate per context (bytes per token / ms per token) against the two-thread
    read bandwidth measured right after the same round (the median over rounds of that fraction); theirs alongside
    (its whole K/V cache is read every token)."""
    if "fp32" not in record["summary"]:
        return {}
    bws = record["read_bandwidth_bytes_s"]["fp32"]
    out = {"read_bandwidth_gb_s": [b / 1e9 for b in bws], "contexts": []}
    n = record["new_tokens"]
    for i, (row, ctx) in enumerate(zip(record["summary"]["fp32"]["contexts"], record["contexts"])):
        pos = row["tokens"] % cfg.segment_len  # ours: the rows of the current segment
        ours = decode_bytes(cfg, 4, pos + n // 2, memory=True)
        theirs = decode_bytes(cfg, 4, row["tokens"] + n // 2, memory=False)
        per_round = {side: [b[side]["total"] / (run["contexts"][i]["decode_ms_median"] / 1000) / bw
                            for run, bw in zip(record["runs"][f"{side}-fp32"], bws)]
                     for side, b in (("ours", {"ours": ours}), ("theirs", {"theirs": theirs}))}
        out["contexts"].append({"context": ctx, "ours_bytes": ours, "theirs_bytes": theirs,
                                "ours_gb_s": ours["total"] / (row["ours_ms"] / 1000) / 1e9,
                                "theirs_gb_s": theirs["total"] / (row["theirs_ms"] / 1000) / 1e9,
                                "ours_fraction": float(np.median(per_round["ours"])),
                                "theirs_fraction": float(np.median(per_round["theirs"]))})
    return out


def plot(record: dict, path: Path) -> None:
    """ms per generated token against the context, both sides, each precision."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = {"fp32": "tab:blue", "int4": "tab:orange"}
    for prec, summ in record["summary"].items():
        x = [r["tokens"] for r in summ["contexts"]]
        ax.plot(x, [r["ours_ms"] for r in summ["contexts"]], "o-", color=colors.get(prec),
                label=f"infini-export {prec} ({summ['ours_peak_rss_mb']:,.0f} MB peak)")
        ax.plot(x, [r["theirs_ms"] for r in summ["contexts"]], "s--", color=colors.get(prec),
                label=f"onnxruntime-genai {prec} ({summ['theirs_peak_rss_mb']:,.0f} MB peak)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(record["context_tokens"], record["contexts"])
    ax.set_ylim(0, None)
    ax.set_xlabel("tokens of context")
    ax.set_ylabel("ms per generated token (median)")
    ax.set_title(f"{record['preset']} and its Llama twin, {record['threads']} threads, "
                 f"{record['rounds']} alternating rounds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(record: dict) -> str:
    """The summary as a Markdown table."""
    lines = ["| precision | context | ours ms/token | theirs ms/token | theirs/ours | prefill ours / theirs tok/s "
             "| ours/theirs |", "|---|---|---|---|---|---|---|"]
    for prec, summ in record["summary"].items():
        for r in summ["contexts"]:
            lines.append(f"| {prec} | {r['context']} | {r['ours_ms']:.1f} | {r['theirs_ms']:.1f} | "
                         f"{r['decode_ratio']:.2f}x | {r['ours_prefill_tok_s']:.0f} / {r['theirs_prefill_tok_s']:.0f} "
                         f"| {r['prefill_ratio']:.2f}x |")
    lines.append("")
    lines.append("| precision | peak RSS ours | peak RSS theirs |")
    lines.append("|---|---|---|")
    for prec, summ in record["summary"].items():
        lines.append(f"| {prec} | {summ['ours_peak_rss_mb']:,.0f} MB | {summ['theirs_peak_rss_mb']:,.0f} MB |")
    return "\n".join(lines)


def write(record: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, png, md = out / f"{record['preset']}.json", out / f"{record['preset']}.png", out / f"{record['preset']}.md"
    js.write_text(json.dumps(record, indent=1) + "\n")
    plot(record, png)
    md.write_text(table(record) + "\n")
    return [js, png, md]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use scripts/bench_peer.py")

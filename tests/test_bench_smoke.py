"""``scripts/bench.py --smoke``: every backend once on the tiny preset, well-formed JSON with every field."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["eager", "ort-fp32", "ort-int8", "et-xnnpack-fp32", "et-xnnpack-int8", "et-portable"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_bench_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["schema"] == "infini-export-bench/1" and data["mode"] == "smoke"

    # where and how it was measured
    assert data["machine"]["logical_cpus"] >= 1 and data["machine"].get("cpu_model")
    assert data["versions"]["torch"] and data["versions"]["onnxruntime"]
    assert data["settings"]["threads"] >= 1

    # the machine's limit, and FLOPs per token
    assert _positive(data["gemm"]["best_gflops"])
    assert {"start", "end"} <= {s["when"] for s in data["gemm"]["samples"]}

    # throughput: every backend of every config, with every field (or the reason it has none)
    assert data["throughput"], "no throughput config measured"
    et_landed = (ROOT / "exporters" / "executorch.py").exists() and (ROOT / "runtime" / "backends" / "executorch.py").exists()
    for conf in data["throughput"]:
        assert _positive(conf["flops_per_token"]) and _positive(conf["parameters"])
        assert conf["flops_per_token"] == sum(conf["flops_breakdown"].values())
        assert _positive(conf["interleaved_gemm"]["median_gflops"])
        assert set(conf["results"]) == set(BACKENDS)
        for name in BACKENDS:
            rec = conf["results"][name]
            must_run = name in ("eager", "ort-fp32", "ort-int8") or et_landed
            if rec["status"] != "ok":
                assert not must_run, f"{name}: {rec}"
                assert rec["status"] == "unavailable" and rec["reason"]
                continue
            assert _positive(rec["tokens_per_second"]), (name, rec)
            assert _positive(rec["latency_ms"]["median"]) and _positive(rec["latency_ms"]["p90"])
            assert rec["latency_ms"]["p90"] >= rec["latency_ms"]["median"]
            assert _positive(rec["first_call_ms"]) and _positive(rec["load_seconds"])
            assert _positive(rec["ratio_to_eager"]) and _positive(rec["mfu"])
            assert _positive(rec["mfu_vs_interleaved_gemm"]) and _positive(rec["tokens_per_second_from_median"])
            assert rec["segments_measured"] >= 1

    # export cost of every exported backend
    exported = {r["backend"]: r for r in data["export"]}
    for name in BACKENDS[1:]:
        rec = exported[name]
        if rec["status"] == "ok":
            assert _positive(rec["wall_seconds"]) and _positive(rec["peak_rss_mb"]) and _positive(rec["artifact_bytes"])

    # memory: Infini through onnxruntime vs the full-attention baseline, state vs KV cache
    mem = data["memory"]
    assert mem["infini"] and mem["baseline"] and mem["state"]
    for rec in mem["infini"]:
        assert rec["status"] == "ok", rec
        assert _positive(rec["peak_rss_mb"]) and _positive(rec["tokens_per_second"]) and _positive(rec["state_bytes"])
        runs = rec["peak_rss_mb_runs"]  # several processes per length; the reported peak is their median
        assert len(runs) == 3 and rec["peak_rss_mb"] == sorted(runs)[1]
    for rec in mem["baseline"]:
        assert rec["status"] == "ok", rec
        assert _positive(rec["peak_rss_mb"]) and _positive(rec["kv_cache_bytes"]) and rec["tokens"] > 0
    for row in mem["state"]:
        assert row["infini_state_bytes"] == row["paper_formula_bytes"]  # d_key (d_value + 1) H per layer
        assert row["kv_cache_bytes"] > row["infini_state_bytes"]

    assert data["targets"] and all({"name", "target", "measured", "met"} <= set(t) for t in data["targets"])
    for png in data["plots"]:
        assert (tmp_path / png).stat().st_size > 1000

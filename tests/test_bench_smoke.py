"""``scripts/bench.py --smoke``: every backend once on the tiny preset, well-formed JSON with every field; and the
helpers every benchmark uses (length parsing, peak RSS, the export-variant registry)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters.variants import ALIASES, MAIN, VARIANTS, UnknownVariantError, get_variant, parse_variants
from runtime.errors import InputError
from runtime.measure import format_length, parse_length, peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
# eager, both ONNX variants and ExecuTorch's device default: every runtime the benchmark drives, one ExecuTorch
# export (the other ExecuTorch variants export through the same registry in tests/et_artifacts.py)
BACKENDS = ["eager", "onnx-fp32", "onnx-int8", "executorch-xnnpack-int8"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_bench_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # its own artifact folder: exported afresh every run, whatever a user's cache holds
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--timeout", "1200",
                           "--out", str(tmp_path), "--artifacts", str(tmp_path / "artifacts"),
                           "--backends", ",".join(BACKENDS)],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["schema"] == "infini-export-bench/2" and data["mode"] == "smoke"

    # where and how it was measured
    assert data["machine"]["logical_cpus"] >= 1 and data["machine"].get("cpu_model")
    assert data["versions"]["torch"] and data["versions"]["onnxruntime"]
    assert data["settings"]["threads"] >= 1

    # the machine's limit, and FLOPs per token
    assert _positive(data["gemm"]["best_gflops"])
    assert {"start", "end"} <= {s["when"] for s in data["gemm"]["samples"]}

    # throughput: every backend of every config, with every field (or the reason it has none)
    assert data["throughput"], "no throughput config measured"
    for conf in data["throughput"]:
        assert _positive(conf["flops_per_token"]) and _positive(conf["parameters"])
        assert conf["flops_per_token"] == sum(conf["flops_breakdown"].values())
        assert _positive(conf["interleaved_gemm"]["median_gflops"])
        assert set(conf["results"]) == set(BACKENDS)
        for name in BACKENDS:
            rec = conf["results"][name]
            assert rec["status"] == "ok", f"{name}: {rec}"
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
        assert rec["status"] == "ok" and rec["parity_passed"], rec
        assert rec["max_batch"] == max(b for _, _, b in data["settings"]["configs"])  # the batch it runs, no more
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


# ---- the shared helpers the benchmarks stand on ---------------------------------------------------------

@pytest.mark.parametrize("text,expected", [("4096", 4096), ("4K", 4 * 1024), ("4k", 4 * 1024), ("1M", 1024 * 1024),
                                           (" 1048576 ", 1 << 20), ("0.5K", 512), ("2G", 2 * 1024 ** 3), (7, 7)])
def test_parse_length_reads_counts_and_binary_units(text, expected):
    assert parse_length(text) == expected


@pytest.mark.parametrize("text,match", [("abc", "expected a number"), ("", "expected a number"), ("4KB", "4KB"),
                                        ("1.3K", "whole number"), ("0", "positive"), ("-5", "expected a number"),
                                        (0, "positive")])
def test_parse_length_refuses_bad_input_naming_it(text, match):
    with pytest.raises(InputError, match=match):
        parse_length(text)
    with pytest.raises(ValueError):  # InputError is a ValueError: argparse and callers catching ValueError see it
        parse_length(text)


@pytest.mark.parametrize("n", [1, 1000, 1024, 1536, 4096, 32768, 1 << 20, 3 << 20, (1 << 20) + 1, 5 << 30])
def test_format_length_round_trips(n):
    text = format_length(n)
    assert parse_length(text) == n
    assert len(text) <= len(str(n))


def _in_child(code: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", "from runtime.measure import peak_rss_mb\n" + code], capture_output=True,
                         text=True, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return [float(x) for x in out.stdout.split()]


def test_peak_rss_is_the_process_own_high_water_mark():
    # rises by what the process touches, and stays up after it is freed
    before, during, after = _in_child("import numpy as np\nb = peak_rss_mb()\na = np.ones(96 * 2 ** 20 // 8)\n"
                                      "d = peak_rss_mb()\ndel a\nprint(b, d, peak_rss_mb())")
    assert during - before >= 90 and after >= during - 2  # (the kernel syncs its RSS counters lazily)
    # a child process starts afresh: its peak is its own, not its (larger) parent's
    block = np.ones(256 * 2 ** 20 // 8)
    (child,) = _in_child("print(peak_rss_mb())")
    assert 0 < child < peak_rss_mb() - 200
    del block


def test_variant_names_follow_one_scheme():
    names = list(VARIANTS)
    assert len(set(names)) == len(names) and set(MAIN) <= set(names)
    for name, v in VARIANTS.items():
        assert get_variant(name) is v and v.name == name
        parts = name.split("-")
        assert parts[0] == v.format and v.precision in parts and v.runtime in ("onnxruntime", "executorch")
        assert (parts[1] in ("xnnpack", "portable")) == (v.format == "executorch")
        assert v.quantize == (None if v.precision == "fp32" else v.precision)
        assert v.export_options()["quantize"] == v.quantize
        assert ("block_size" in v.export_options()) == name.endswith(f"-b{v.block_size}")
    assert get_variant("executorch-portable-fp32").delegate == "none"
    assert get_variant("onnx-int4-b64").export_options() == {"quantize": "int4", "delegate": "xnnpack",
                                                             "block_size": 64}
    for old, new in ALIASES.items():
        assert get_variant(old).name == new
    assert [v.name for v in parse_variants("ort-fp32,onnx-fp32, executorch-int4")] == [
        "onnx-fp32", "executorch-xnnpack-int4"]


@pytest.mark.parametrize("text", ["onnx-int2", "tflite-fp32", "", " , "])
def test_unknown_variant_names_the_choices(text):
    with pytest.raises(UnknownVariantError, match="onnx-fp32"):
        parse_variants(text)


def test_compare_entries_carry_session_options():
    from benchmarks.prefill import compare_entry
    assert compare_entry("out/a") == ("a", "out/a", {})
    label, folder, options = compare_entry("out/a@execution_order=default@low_memory=true")
    assert folder == "out/a" and options == {"execution_order": "default", "low_memory": True}
    assert label == "a (execution_order=default) (low_memory=True)"
    with pytest.raises(ValueError, match="FOLDER@option=value"):
        compare_entry("out/a@low_memory")

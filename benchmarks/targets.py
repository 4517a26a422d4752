"""The benchmark's targets, each met, missed or not measured."""
from __future__ import annotations

from runtime.measure import format_length


def _find(throughput, preset, seg, batch):
    for c in throughput:
        if (c["preset"], c["segment_len"], c["batch"]) == (preset, seg, batch):
            return c
    return None


def _tps(conf, name):
    if conf is None:
        return None
    r = conf["results"].get(name, {})
    return r.get("tokens_per_second") if r.get("status") == "ok" else None


def evaluate_targets(throughput, memory, gemm_best) -> list[dict]:
    """Each target: name, wanted, measured, met (True / False / None when its config was not measured)."""
    out = []

    def add(name, target, measured, met, note=""):
        out.append({"name": name, "target": target, "measured": measured, "met": met, "note": note})

    c = _find(throughput, "small", 128, 1)
    e = _tps(c, "eager")
    for b, need in (("onnx-fp32", 2.0), ("executorch-xnnpack-fp32", 1.5)):
        v = _tps(c, b)
        ratio = round(v / e, 3) if v and e else None
        add(f"{b} vs eager, small/128/b1", f">= {need}x eager tokens/s", ratio,
            None if ratio is None else ratio >= need, "" if c else "config not measured")
    for q, f in (("onnx-int8", "onnx-fp32"), ("executorch-xnnpack-int8", "executorch-xnnpack-fp32")):
        for key in (("small", 128, 1), ("medium", 512, 1)):
            cc = _find(throughput, *key)
            a, b = _tps(cc, q), _tps(cc, f)
            ratio = round(a / b, 3) if a and b else None
            add(f"{q} vs {f}, {key[0]}/{key[1]}/b{key[2]}", "int8 faster than fp32 (> 1x)", ratio,
                None if ratio is None else ratio > 1.0, "" if cc else "config not measured")
    for batch in (1, 8):
        cc = _find(throughput, "medium", 512, batch)
        if cc is None:
            if batch == 1:
                add("MFU of the fastest backend, medium/512/b1", ">= 50% of the measured GEMM rate", None, None,
                    "config not measured")
            continue
        ok = {k: v for k, v in cc["results"].items() if v.get("status") == "ok"}
        if not ok:
            continue
        best = max(ok, key=lambda k: ok[k]["tokens_per_second"])
        mfu = ok[best]["tokens_per_second"] * cc["flops_per_token"] / gemm_best
        add(f"MFU of the fastest backend, medium/512/b{batch}", ">= 50% of the measured GEMM rate",
            round(float(mfu), 4), bool(mfu >= 0.5),
            f"fastest: {best}" + (" (int8 kernels measured against the fp32 GEMM rate)" if "int8" in best else ""))
        fp32 = {k: v for k, v in ok.items() if "int8" not in k}
        if fp32 and "int8" in best:
            b32 = max(fp32, key=lambda k: fp32[k]["tokens_per_second"])
            m32 = fp32[b32]["tokens_per_second"] * cc["flops_per_token"] / gemm_best
            add(f"MFU of the fastest fp32 backend, medium/512/b{batch}", ">= 50% of the measured GEMM rate "
                "(like for like: fp32 model vs fp32 GEMM)", round(float(m32), 4), bool(m32 >= 0.5), f"fastest fp32: {b32}")
    if memory:
        flat = memory.get("infini_rss_flatness")
        lens = [r["tokens_requested"] for r in memory["infini"] if r.get("status") == "ok"]
        span = f"{format_length(lens[0])}..{format_length(lens[-1])}" if lens else "-"
        add(f"Infini peak RSS flat ({span})", "within 2% from 4K to 1M tokens",
            flat["spread_percent"] if flat else None, (flat["spread_percent"] <= 2.0) if flat else None,
            "" if lens and lens[-1] >= 1 << 20 else "1M not measured in this mode")
        g = memory.get("baseline_rss_growth")
        add("baseline peak RSS grows linearly", "linear in tokens (R^2 of a line through the measured points)",
            g["r2"] if g else None, (g["r2"] >= 0.98) if g else None,
            f"slope {g['mb_per_1k_tokens']} MB/1K tokens vs KV cache {g['kv_cache_mb_per_1k_tokens']}" if g else
            "fewer than 2 baseline points")
        row = memory["state"][-1]
        add(f"state vs KV cache at {format_length(row['tokens'])}", ">= 1000x smaller at 1M tokens",
            row["kv_over_state"], row["kv_over_state"] >= 1000 if row["tokens"] >= 1 << 20 else None,
            "KV cache bytes " + ("measured" if row["kv_cache_measured"] else "analytic (2 L H dh T x 4 B; the "
                                 "baseline did not get there)"))
    return out

"""What people look at: PNG plots and the markdown tables pasted into docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.measure import format_length

from .runner import BACKENDS

COLORS = {"eager": "#555555", "onnx-fp32": "#1f77b4", "onnx-int8": "#aec7e8",
          "executorch-xnnpack-fp32": "#d62728", "executorch-xnnpack-int8": "#ff9896",
          "executorch-portable-fp32": "#9467bd"}


def plots(result: dict, out: Path) -> list[str]:
    """throughput.png, memory.png and export.png (those with data) into ``out``; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    thr = result["throughput"]
    if thr:
        names = list(BACKENDS)
        labels = [f"{c['preset']}/{c['segment_len']}/b{c['batch']}" for c in thr]
        fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(thr) + 3), 8), sharex=True)
        w = 0.8 / len(names)
        for i, n in enumerate(names):
            xs = np.arange(len(thr)) + (i - len(names) / 2 + 0.5) * w
            t = [c["results"].get(n, {}).get("tokens_per_second") or 0 for c in thr]
            m = [100 * (c["results"].get(n, {}).get("mfu") or 0) for c in thr]
            axes[0].bar(xs, t, w, label=n, color=COLORS[n])
            axes[1].bar(xs, m, w, label=n, color=COLORS[n])
        axes[0].set_yscale("log")
        axes[0].set_ylabel("tokens/s streamed (log)")
        axes[0].set_title(f"Throughput per backend ({result['settings']['threads']} thread(s); missing bar: "
                          "unavailable or skipped)")
        axes[0].legend(fontsize=8, ncol=3)
        axes[1].set_ylabel("model FLOP utilisation (% of best GEMM)")
        axes[1].axhline(50, color="k", lw=0.8, ls="--")
        axes[1].set_xticks(np.arange(len(thr)), labels, rotation=30, ha="right")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        files.append("throughput.png")
    mem = result.get("memory")
    if mem:
        inf = [r for r in mem["infini"] if r.get("status") == "ok"]
        base = [r for r in mem["baseline"] if r.get("status") == "ok" and r.get("tokens")]
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        ax = axes[0]
        ax.plot([r["tokens"] for r in inf], [r["peak_rss_mb"] for r in inf], "o-", label="Infini (onnxruntime)")
        ax.plot([r["tokens"] for r in base], [r["peak_rss_mb"] for r in base], "s-", label="full attention + KV cache")
        for r in base:
            if r.get("stopped"):
                ax.annotate("stopped: " + r["stopped"].split(":")[0], (r["tokens"], r["peak_rss_mb"]), fontsize=8)
        ax.set(xscale="log", yscale="log", xlabel="tokens streamed", ylabel="peak RSS (MB)", title="Peak RSS")
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.plot([r["tokens"] for r in inf], [r["us_per_token"] for r in inf], "o-", label="Infini (mean)")
        ax.plot([r["tokens"] for r in base], [r["us_per_token"] for r in base], "s-", label="full attention (mean)")
        ax.plot([r["tokens"] for r in base], [r["last_chunk_us_per_token"] for r in base], "s--",
                label="full attention (last chunk)")
        ax.set(xscale="log", yscale="log", xlabel="tokens streamed", ylabel="µs per token", title="Time per token")
        ax.legend(fontsize=8)
        ax = axes[2]
        st = mem["state"]
        xs = [r["tokens"] for r in st]
        ax.plot(xs, [r["kv_cache_bytes"] for r in st], "s-", label="KV cache (2 L H dh T x 4 B)")
        ax.plot(xs, [r["infini_state_bytes"] for r in st], "o-", label="Infini state (measured)")
        ax.plot(xs, [r["paper_formula_bytes"] for r in st], "k:", label="paper: dk (dv+1) H per layer x 4 B")
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="bytes", title="State vs KV cache")
        ax.legend(fontsize=8)
        fig.suptitle(f"{mem['preset']} (d={mem['config']['d_model']}, L={mem['config']['n_layers']}), segment "
                     f"{mem['segment_len']}, {mem['threads']} thread(s)")
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
        files.append("memory.png")
    exp = [r for r in result["export"] if r.get("status") == "ok"]
    if exp:
        labels = [f"{r['preset']}/{r['segment_len']}\n{r['backend']}" for r in exp]
        fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.45 * len(exp) + 2), 9), sharex=True)
        x = np.arange(len(exp))
        col = [COLORS[r["backend"]] for r in exp]
        axes[0].bar(x, [r["wall_seconds"] for r in exp], color=col, label="wall")
        axes[0].plot(x, [r.get("cpu_seconds") or np.nan for r in exp], "k_", ms=18, mew=2, label="CPU")
        axes[0].set_ylabel("seconds")
        axes[0].legend(fontsize=8)
        axes[0].set_title("Export cost: export + parity check, " +
                          ("each in its own process" if not any(r.get("shared_process") for r in exp) else
                           "some in a shared process"), fontsize=10)
        axes[1].bar(x, [r["peak_rss_mb"] for r in exp], color=col)
        axes[1].set_ylabel("peak RSS MB")
        axes[2].bar(x, [r["artifact_bytes"] / 1e6 for r in exp], color=col)
        axes[2].set_ylabel("artifact MB")
        axes[2].set_xticks(x, labels, rotation=90, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "export.png", dpi=110)
        plt.close(fig)
        files.append("export.png")
    return files


# ---- markdown tables (pasted into docs/benchmarks.md) --------------------------------------------
def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{nd}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def tables_markdown(result: dict) -> str:
    """The result as markdown: machine, GEMM rate, throughput, memory, export cost and targets tables."""
    m, v, st = result["machine"], result["versions"], result["settings"]
    lines = [f"Measured {result['created']} ({result['mode']} mode, {result['duration_seconds']:.0f} s): "
             f"{m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs, {m.get('mem_total_gb')} GB; "
             f"{st['threads']} thread(s) for every backend and the GEMM; load average {result['load_start']['loadavg_1m']}"
             f" at the start, {result['load_end']['loadavg_1m']} at the end. "
             + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".", ""]
    g = result["gemm"]
    lines += [f"Best fp32 GEMM: **{g['best_gflops']:.1f} GFLOP/s** ({g['best']['lib']}, n={g['best']['n']}, "
              f"{g['best']['when']} of the run).", ""]
    thr = result["throughput"]
    names = list(BACKENDS)
    if thr:
        lines += ["| config | params | MFLOP/token | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for c in thr:
            cells = []
            for n in names:
                r = c["results"].get(n, {})
                if r.get("status") == "ok":
                    cells.append(f"{r['tokens_per_second']:,.0f} ({r['ratio_to_eager']:.2f}x)")
                else:
                    cells.append(r.get("status", "-"))
            lines.append(f"| {c['preset']}/{c['segment_len']}/b{c['batch']} | {c['parameters'] / 1e6:.2f}M | "
                         f"{c['flops_per_token'] / 1e6:.2f} | " + " | ".join(cells) + " |")
        lines += ["", "tokens/s streamed (ratio to eager torch). GEMM rate interleaved with the backends, median "
                  "(best) GFLOP/s: " + "; ".join(f"{c['preset']}/{c['segment_len']}/b{c['batch']} "
                                                 f"{c['interleaved_gemm']['median_gflops']:.0f} "
                                                 f"({c['interleaved_gemm']['best_gflops']:.0f})" for c in thr) + ".",
                  "", "Per backend (x eager (medians): ratio of per-segment median latencies; MFU: against the best "
                  "GEMM rate of the run; MFU vs interleaved GEMM: median rate against the median GEMM rate of "
                  "the same round-robin, robust to load from other processes):", "",
                  "| config | backend | tokens/s | x eager | x eager (medians) | MFU | MFU vs interleaved GEMM | "
                  "latency median ms | p90 ms | first call ms | load s | segments |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in thr:
            for n in names:
                r = c["results"].get(n, {})
                key = f"{c['preset']}/{c['segment_len']}/b{c['batch']}"
                if r.get("status") != "ok":
                    lines.append(f"| {key} | {n} | {r.get('status', '-')}: {str(r.get('reason', ''))[:90]} |"
                                 " | | | | | | | | | |")
                    continue
                lines.append(f"| {key} | {n} | {r['tokens_per_second']:,.0f} | {r['ratio_to_eager']:.2f} | "
                             f"{r['ratio_to_eager_from_median']:.2f} | {100 * r['mfu']:.1f}% | "
                             f"{100 * r['mfu_vs_interleaved_gemm']:.1f}% | {_f(r['latency_ms']['median'])} | "
                             f"{_f(r['latency_ms']['p90'])} | {_f(r['first_call_ms'])} | {_f(r['load_seconds'])} | "
                             f"{r['segments_measured']} |")
        lines.append("")
    mem = result.get("memory")
    if mem:
        lines += [f"Memory: {mem['preset']}, segment {mem['segment_len']}; Infini through onnxruntime fp32 "
                  "(`infini-export run --random-tokens N --quiet`), baseline: " + mem["baseline_desc"] + ".", "",
                  "| tokens | Infini peak RSS MB (median of the processes; range) | Infini µs/token | baseline peak RSS MB | baseline µs/token "
                  "(mean / last chunk) | baseline run | Infini state B | paper formula B | KV cache B | KV / state |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for i, n in enumerate(mem["lengths"]):
            a, b, srow = mem["infini"][i], mem["baseline"][i], mem["state"][i]
            if b.get("status") == "ok":
                brun = "complete" if not b.get("stopped") else f"stopped at {b['tokens']:,} ({b['stopped']})"
                bcells = (f"{_f(b['peak_rss_mb'])} | {_f(b['us_per_token'])} / {_f(b['last_chunk_us_per_token'])}"
                          f" | {brun}")
            else:
                bcells = f"- | - | {b.get('stopped') or b.get('error') or b.get('status')}"
            kv = f"{srow['kv_cache_bytes']:,}" + ("" if srow["kv_cache_measured"] else " (analytic)")
            runs = a.get("peak_rss_mb_runs") or []
            spread = f" ({min(runs)}-{max(runs)})" if len(runs) > 1 and None not in runs else ""
            lines.append(f"| {format_length(n)} | {_f(a.get('peak_rss_mb'))}{spread} | {_f(a.get('us_per_token'))} | {bcells} | "
                         f"{srow['infini_state_bytes']:,} | {srow['paper_formula_bytes']:,} | {kv} | "
                         f"{srow['kv_over_state']:,.0f}x |")
        lines.append("")
    exp = result["export"]
    if exp:
        lines += ["| model | backend | wall s | CPU s | peak RSS MB | artifact MB | parity | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in exp:
            note = ", ".join(x for x in ("shared a process" if r.get("shared_process") else "",
                                         f"{r.get('concurrent_lanes')} at once" if (r.get("concurrent_lanes") or 1) > 1
                                         else "") if x)
            note += " reused" if r.get("reused") else ""
            if r.get("status") != "ok":
                lines.append(f"| {r.get('preset')}/{r.get('segment_len')} | {r.get('backend')} | {r['status']}: "
                             f"{str(r.get('error'))[:80]} | | | | | |")
                continue
            lines.append(f"| {r['preset']}/{r['segment_len']} | {r['backend']} | {_f(r['wall_seconds'])} | "
                         f"{_f(r.get('cpu_seconds'))} | {_f(r['peak_rss_mb'])} | {r['artifact_bytes'] / 1e6:.2f} | "
                         f"{'passed' if r.get('parity_passed') else 'FAILED'} | {note} |")
        lines.append("")
    lines += ["| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        mark = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {t['target']} | {_f(t['measured'], 4)} {t['note']} | {mark} |")
    return "\n".join(lines) + "\n"

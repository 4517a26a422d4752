"""What a training run shows: progress lines, train_report.json and its plot, the evaluation table."""
from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from runtime.atomic import atomic_write

REPORT_JSON = "train_report.json"
REPORT_PNG = "train_report.png"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def write_json(path: Path, obj, indent: int = 1) -> None:
    """``obj`` as JSON, written atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=indent) + "\n").encode()))


def write_report(out: Path, report: dict) -> None:
    """OUT/train_report.json and OUT/train_report.png (losses, curriculum, held-out EM and the proxy by step)."""
    write_json(out / REPORT_JSON, report)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # plotting is a nicety
        log(f"no plot: {exc}")
        return
    hist, evals = report["history"], report["evals"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    if hist:
        steps = [h["step"] for h in hist]
        ax1.plot(steps, [h["loss"] for h in hist], label="total loss")
        ax1.plot(steps, [h["answer_loss"] for h in hist], label="answer loss (digits)")
        ax1.plot(steps, [h["lm_loss"] for h in hist], label="LM loss", alpha=0.7)
        ax1.axhline(math.log(10), color="gray", ls=":", label="chance (ln 10)")
        ax1.set_ylabel("loss (nats)")
        ax1.set_yscale("log")
        ax1.legend(loc="upper right", fontsize=8)
        axl = ax2.twinx()
        axl.plot(steps, [h["length"] for h in hist], color="tab:gray", alpha=0.5, label="curriculum length")
        axl.set_ylabel("input length (tokens)")
        axl.legend(loc="lower right", fontsize=8)
    if evals:
        ax2.plot([e["step"] for e in evals], [e["em"] for e in evals], "o-", color="tab:green",
                 label="held-out EM (key in an earlier segment)")
    proxy = report.get("proxy") or []
    if proxy:
        ax2.plot([r["step"] for r in proxy], [r["score"] for r in proxy], "s-", color="tab:purple",
                 label=f"proxy at {proxy[-1]['length']:,} tokens: lowest p(correct digit)")
        if any("raw" in r for r in proxy):
            ax2.plot([r["step"] for r in proxy if "raw" in r], [r["raw"]["score"] for r in proxy if "raw" in r],
                     "s:", color="tab:purple", alpha=0.5, label="proxy, raw weights (before --ema)")
    ax2.set_ylim(-0.03, 1.03)
    ax2.set_xlabel("step")
    ax2.set_ylabel("exact match")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"passkey training: {report.get('preset')} ({report.get('parameters', 0):,} params)")
    fig.tight_layout()
    atomic_write(out / REPORT_PNG, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def progress_line(rec: dict, cur_len: int) -> str:
    """One progress line of a history record."""
    def fmt(x):
        return "-" if x is None else f"{x:.2f}"
    ems = (f"train EM {fmt(rec['train_em'])} (local {fmt(rec['train_em_local'])}, no filler "
           f"{fmt(rec['train_em_nofill'])}, extrapolated {fmt(rec['train_em_extrapolated'])})")
    return (f"step {rec['step']:5d} | {rec['minutes']:5.1f} min | loss {rec['loss']:.3f} | answer "
            f"{rec['answer_loss']:.3f} | needle {rec['needle_loss']:.3f} | lm {rec['lm_loss']:.3f} | {ems} | len "
            f"{cur_len} | lr {rec['lr']:.2e} | {rec['tokens_per_s']:.0f} tok/s | gates {rec['gates']}")


def eval_table(rows: dict, lengths: list[int], depths: list[float]) -> str:
    """Markdown: correct / prompts per (length, depth) of ``{(length, depth): PasskeyScore}``."""
    lines = ["| length | " + " | ".join(f"depth {d:g}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for length in lengths:
        cells = [f"{sum(rows[(length, d)].correct)}/{len(rows[(length, d)])}" for d in depths]
        lines.append(f"| {length:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextmanager
def stop_on_signals():
    """``{"flag": False}``, set to True by SIGTERM or SIGINT while the block runs (a training run finishes its step,
    saves and stops); the process's own handlers are back when the block ends."""
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

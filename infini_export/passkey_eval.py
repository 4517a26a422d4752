"""``infini-export passkey``: the paper's Table 3 on an exported (or eager) model, in constant memory.

Prompts are generated lazily, chunk by chunk, so nothing in the evaluation grows with the length:
a 1M-token prompt is never held in memory. The memory-disabled control resets the state at every
segment boundary; since nothing then survives a boundary, it is computed exactly by running only
the last (partial) segment of the prompt from a zero state.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm  # imported up front: a first import mid-run would show as RSS growth with length

from .streaming import peak_rss_mb
from .tasks import passkey as pk

_UNIT_LENS = np.array([len(u) for u in pk._FILLER_UNITS])
_CYCLE = np.frombuffer("".join(pk._FILLER_UNITS).encode(), dtype=np.uint8)
_INSTR = np.frombuffer((pk.INSTRUCTION + " ").encode(), dtype=np.uint8)
_QUESTION = np.frombuffer(pk.QUESTION.encode(), dtype=np.uint8)


@dataclass(frozen=True)
class LazyPrompt:
    """The token layout of ``tasks.passkey`` prompts, computed per position instead of materialised."""

    length: int
    depth: float

    def __post_init__(self):
        lo = pk.min_length(True)
        if self.length < lo:
            raise ValueError(f"length {self.length} is below the shortest passkey prompt ({lo} tokens)")
        budget = self.length - lo
        cycles, rem = divmod(budget, int(_UNIT_LENS.sum()))
        extra = int(np.searchsorted(np.cumsum(_UNIT_LENS), rem) + 1) if rem else 0
        n_units = 5 * cycles + extra
        k = int(round(float(self.depth) * n_units))
        filler_before = min(budget, (k // 5) * int(_UNIT_LENS.sum()) + int(_UNIT_LENS[:k % 5].sum()))
        object.__setattr__(self, "budget", budget)
        object.__setattr__(self, "needle_start", len(_INSTR) + filler_before)
        object.__setattr__(self, "question_start", self.length - len(_QUESTION))

    def chunk(self, lo: int, hi: int, keys: list[str]) -> np.ndarray:
        """Tokens [lo, hi) of every row (one per key): (B, hi - lo) int64."""
        t = np.arange(lo, hi)
        ns, nl, qs = self.needle_start, pk._NEEDLE_LEN, self.question_start
        out = np.empty(t.shape, dtype=np.int64)
        m = t < len(_INSTR)
        out[m] = _INSTR[t[m]]
        f = np.where(t < ns, t - len(_INSTR), t - len(_INSTR) - nl)  # index into the filler
        m = (t >= len(_INSTR)) & ((t < ns) | ((t >= ns + nl) & (t < qs)))
        out[m] = np.where(f[m] == self.budget - 1, 32, _CYCLE[f[m] % len(_CYCLE)])
        m = t >= qs
        out[m] = _QUESTION[t[m] - qs]
        rows = np.repeat(out[None, :], len(keys), axis=0)
        m = (t >= ns) & (t < ns + nl)
        if m.any():
            for b, key in enumerate(keys):
                needle = np.frombuffer((pk.needle_text(key) + " ").encode(), dtype=np.uint8)
                rows[b, m] = needle[t[m] - ns]
        return rows


def parse_length(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KM" else text) * mult)


def answer(session, prompt: LazyPrompt, keys: list[str], memory: bool = True, chunk: int | None = None,
           bar: bool = False) -> list[str]:
    """Greedy answers of every row, streaming the prompt in chunks (memory off: last segment only)."""
    N = session.segment_len
    session.reset(len(keys))
    chunk = chunk or 64 * N
    start = 0 if memory else (prompt.length - 1) // N * N
    last = None
    starts = range(start, prompt.length, chunk)
    if bar and len(starts) > 8:
        starts = tqdm(starts, desc=f"{prompt.length:,} tokens x{len(keys)}", unit="chunk", leave=False)
    for lo in starts:
        last = session.stream(prompt.chunk(lo, min(prompt.length, lo + chunk), keys))
    out = np.empty((len(keys), pk.ANSWER_LEN), dtype=np.int64)
    for i in range(pk.ANSWER_LEN):
        out[:, i] = last.argmax(-1)
        if i + 1 < pk.ANSWER_LEN:
            if not memory and session.tokens_consumed % N == 0:  # a boundary: the control forgets
                session.reset(len(keys))
            last = session.stream(out[:, i:i + 1])
    return [pk.decode(row) for row in out]


def evaluate(session, lengths: list[int], depths: list[float], trials: int, seed: int = 1234,
             control: bool = True, progress=print) -> dict:
    """Accuracy per (length, depth), with tokens/s and peak RSS per length; the control beside it."""
    rows = []
    for li, length in enumerate(lengths):
        cell, t0, tokens = {}, time.perf_counter(), 0
        for di, depth in enumerate(depths):
            rng = np.random.default_rng([seed, li, di])
            keys = [str(k) for k in rng.integers(10000, 100000, size=trials)]
            prompt = LazyPrompt(length, depth)
            answers = answer(session, prompt, keys, bar=bool(progress))
            tokens += length * trials
            ok = [pk.is_correct(a, k) for a, k in zip(answers, keys)]
            entry = {"accuracy": float(np.mean(ok)), "correct": int(sum(ok)), "trials": trials,
                     "needle_segment": prompt.needle_start // session.segment_len,
                     "question_segment": prompt.question_start // session.segment_len,
                     "keys": keys, "answers": answers}
            if control:
                off_answers = answer(session, prompt, keys, memory=False)
                off = [pk.is_correct(a, k) for a, k in zip(off_answers, keys)]
                entry["control_accuracy"] = float(np.mean(off))
                entry["control_answers"] = off_answers
            cell[str(depth)] = entry
            if progress:
                progress(f"  {length:>9,} tokens, depth {depth:<4}: {sum(ok)}/{trials} correct"
                         + (f", memory off {sum(off)}/{trials}" if control else "")
                         + f"  (peak RSS {peak_rss_mb():.0f} MB)")
        seconds = time.perf_counter() - t0
        rows.append({"length": length, "depths": cell, "tokens_per_second": tokens / seconds,
                     "seconds": seconds, "peak_rss_mb": peak_rss_mb()})
    return {"lengths": lengths, "depths": depths, "trials": trials, "seed": seed, "rows": rows}


def table(result: dict) -> str:
    depths = result["depths"]
    names = {0.0: "start", 0.5: "middle", 1.0: "end"}
    head = " / ".join(names.get(float(d), str(d)) for d in depths)
    lines = [f"{'length':>10} | {'accuracy % (' + head + ')':<28} | {'memory off %':<16} | {'tok/s':>8} | "
             f"{'peak RSS MB':>11}"]
    for r in result["rows"]:
        acc = " / ".join(f"{100 * r['depths'][str(d)]['accuracy']:.0f}" for d in depths)
        off = " / ".join(f"{100 * r['depths'][str(d)]['control_accuracy']:.0f}" if "control_accuracy" in r["depths"][str(d)]
                         else "-" for d in depths)  # "-": the control was not run (--no-control)
        lines.append(f"{r['length']:>10,} | {acc:<28} | {off:<16} | {r['tokens_per_second']:>8,.0f} | "
                     f"{r['peak_rss_mb']:>11.0f}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["length"] for r in result["rows"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for d in result["depths"]:
        ax1.plot(lengths, [100 * r["depths"][str(d)]["accuracy"] for r in result["rows"]], "o-",
                 label=f"depth {d}")
        if "control_accuracy" in result["rows"][0]["depths"][str(d)]:
            ax1.plot(lengths, [100 * r["depths"][str(d)]["control_accuracy"] for r in result["rows"]], "x--",
                     alpha=0.6, label=f"depth {d}, memory off")
    ax1.set(xscale="log", xlabel="input length (tokens)", ylabel="exact match (%)", ylim=(-5, 105),
            title="passkey retrieval")
    ax1.legend(fontsize=7)
    rss = [r["peak_rss_mb"] for r in result["rows"]]
    ax2.plot(lengths, rss, "o-")
    for x, y in zip(lengths, rss):
        ax2.annotate(f"{y:.0f} MB", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax2.set(xscale="log", ylim=(0, 1.3 * max(rss)), xlabel="input length (tokens)", ylabel="peak RSS (MB)",
            title="peak memory of the runtime process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def open_any(model_path: str, backend: str | None):
    """An artifact folder through the runtime, or a checkpoint folder through the eager backend."""
    if (Path(model_path) / "manifest.json").is_file():
        from runtime.session import InfiniSession
        return InfiniSession.open(model_path, backend=backend)
    from .checkpoint import load_checkpoint
    from .eager import eager_session
    return eager_session(load_checkpoint(model_path))


def main(args) -> int:
    session = open_any(args.model, args.backend)
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    print(f"passkey on {args.model} ({session.backend.name}), {args.trials} trials per cell")
    result = evaluate(session, lengths, depths, args.trials, args.seed, control=not args.no_control)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["model"] = str(args.model)
    result["backend"] = session.backend.name
    (out / "passkey.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "passkey.png")
    print(table(result))
    print(f"written {out / 'passkey.json'} and {out / 'passkey.png'}")
    return 0

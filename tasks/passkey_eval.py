"""``infini-export passkey``: the paper's Table 3 on an exported (or eager) model, in constant memory.

Prompts are generated lazily, chunk by chunk (``tasks.passkey.PromptLayout``), so nothing in the evaluation
grows with the length: a 1M-token prompt is never held in memory. The memory-disabled control resets the state
at every segment boundary; since nothing then survives a boundary, it is computed exactly by running only the
last (partial) segment of the prompt from a zero state (``tasks.passkey.greedy_answer(memory=False)``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from runtime.measure import parse_length, peak_rss_mb

from . import passkey as pk

DEFAULT_LENGTHS = "4K,32K,128K,1M"
DEFAULT_DEPTHS = "0,0.5,1"


def _is_key(k) -> bool:
    try:
        return pk.check_key(k) == k
    except ValueError:
        return False


def replay_keys(paths: list[str], lengths: list[int] | None = None, depths: list[float] | None = None,
                misses_only: bool = False) -> dict[tuple[int, float], list[str]]:
    """The prompts of earlier ``passkey.json`` results, as ``{(length, depth): keys}`` for :func:`evaluate`.

    Cells of every file are concatenated in file order; ``lengths`` / ``depths`` keep only those cells;
    ``misses_only`` keeps only the keys a run answered wrongly, once each (the union over the files: a fixed set
    of hard prompts).
    """
    out: dict[tuple[int, float], list[str]] = {}
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
            rows = result["rows"]
            cells = [(int(r["length"]), float(d), e) for r in rows for d, e in r["depths"].items()]
            for _, _, e in cells:
                if len(e["keys"]) != len(e["answers"]) or not all(_is_key(k) for k in e["keys"]):
                    raise ValueError("keys and answers do not pair up as 5-digit keys")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"--replay {path}: not a passkey.json result with keys per cell "
                             f"(rows[].depths[].keys/answers): {exc}") from exc
        for length, depth, e in cells:
            if lengths is not None and length not in lengths:
                continue
            if depths is not None and depth not in depths:
                continue
            keys = [k for k, a in zip(e["keys"], e["answers"]) if not (misses_only and pk.is_correct(a, k))]
            have = out.setdefault((length, depth), [])
            # misses: the union over runs (a prompt two runs missed is one hard prompt); all: every prompt as given
            have.extend(k for k in keys if not (misses_only and k in have))
    out = {cell: keys for cell, keys in out.items() if keys}
    if not out:
        raise ValueError(f"--replay {', '.join(map(str, paths))}: no prompt left to replay"
                         + (" (no recorded misses in the selected cells)" if misses_only else
                            " in the selected lengths / depths"))
    return out


def evaluate(session, lengths: list[int], depths: list[float], trials: int, seed: int = 1234,
             control: bool = True, progress=print, keys: dict[tuple[int, float], list[str]] | None = None) -> dict:
    """Accuracy per (length, depth), with tokens/s and peak RSS per length; the control beside it.

    The keys of a cell come from ``seed`` and the cell's place in the grid, or, when ``keys`` is given (see
    :func:`replay_keys`), from that mapping; a cell it lacks is left out of the result.
    """
    rows = []
    for li, length in enumerate(lengths):
        cell, t0, tokens = {}, time.perf_counter(), 0
        for di, depth in enumerate(depths):
            if keys is None:
                cell_keys = pk.draw_keys([seed, li, di], trials)
            elif (length, depth) in keys:
                cell_keys = keys[(length, depth)]
            else:
                continue
            _cell(session, length, depth, cell_keys, control, progress, cell)
            tokens += length * len(cell_keys)
        if not cell:
            continue
        seconds = time.perf_counter() - t0
        rows.append({"length": length, "depths": cell, "tokens_per_second": tokens / seconds,
                     "seconds": seconds, "peak_rss_mb": peak_rss_mb()})
    drawn = keys is None  # replayed keys come from no seed, and cells may differ in size
    return {"lengths": [r["length"] for r in rows], "depths": depths, "trials": trials if drawn else None,
            "seed": seed if drawn else None, "rows": rows}


def _cell(session, length: int, depth: float, keys: list[str], control: bool, progress, cell: dict) -> None:
    """One (length, depth) cell: greedy answers with the memory (and without it), written into ``cell``."""
    trials = len(keys)
    prompt = pk.prompt_layout(length, depth)
    answers = pk.greedy_answer(session, prompt.prompts(keys), progress=bool(progress))
    ok = [pk.is_correct(a, k) for a, k in zip(answers, keys)]
    entry = {"accuracy": float(np.mean(ok)), "correct": int(sum(ok)), "trials": trials,
             "needle_segment": prompt.needle_start // session.segment_len,
             "question_segment": prompt.question_start // session.segment_len,
             "keys": keys, "answers": answers}
    if control:
        off_answers = pk.greedy_answer(session, prompt.prompts(keys), memory=False)
        off = [pk.is_correct(a, k) for a, k in zip(off_answers, keys)]
        entry["control_accuracy"] = float(np.mean(off))
        entry["control_answers"] = off_answers
    cell[str(depth)] = entry
    if progress:
        progress(f"  {length:>9,} tokens, depth {depth:<4}: {sum(ok)}/{trials} correct"
                 + (f", memory off {sum(off)}/{trials}" if control else "")
                 + f"  (peak RSS {peak_rss_mb():.0f} MB)")


def table(result: dict) -> str:
    depths = result["depths"]
    names = {0.0: "start", 0.5: "middle", 1.0: "end"}
    head = " / ".join(names.get(float(d), str(d)) for d in depths)
    lines = [f"{'length':>10} | {'accuracy % (' + head + ')':<28} | {'memory off %':<16} | {'tok/s':>8} | "
             f"{'peak RSS MB':>11}"]
    for r in result["rows"]:
        cells = [r["depths"].get(str(d), {}) for d in depths]  # {}: a cell a replay did not hold
        acc = " / ".join(f"{100 * c['accuracy']:.0f}" if c else "-" for c in cells)
        off = " / ".join(f"{100 * c['control_accuracy']:.0f}" if "control_accuracy" in c
                         else "-" for c in cells)  # "-": the control was not run (--no-control)
        lines.append(f"{r['length']:>10,} | {acc:<28} | {off:<16} | {r['tokens_per_second']:>8,.0f} | "
                     f"{r['peak_rss_mb']:>11.0f}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["length"] for r in result["rows"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    nan = {"accuracy": np.nan, "control_accuracy": np.nan}  # a cell a replay did not hold: a gap in the line
    for d in result["depths"]:
        cells = [r["depths"].get(str(d), nan) for r in result["rows"]]
        ax1.plot(lengths, [100 * c["accuracy"] for c in cells], "o-", label=f"depth {d}")
        if any("control_accuracy" in c and c is not nan for c in cells):
            ax1.plot(lengths, [100 * c.get("control_accuracy", np.nan) for c in cells], "x--",
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
    from infini_export.checkpoint import load_checkpoint
    from infini_export.eager import eager_session
    return eager_session(load_checkpoint(model_path))


def main(args) -> int:
    if args.misses_only and not args.replay:
        raise SystemExit("--misses-only selects from the prompts of --replay PASSKEY_JSON: pass one")
    session = open_any(args.model, args.backend)
    lengths = [parse_length(x) for x in args.lengths.split(",")] if args.lengths else None
    depths = [float(x) for x in args.depths.split(",")] if args.depths else None
    keys = None
    if args.replay:
        keys = replay_keys(args.replay, lengths, depths, misses_only=args.misses_only)
        lengths = sorted({length for length, _ in keys})
        depths = sorted({depth for _, depth in keys})
        n = sum(map(len, keys.values()))
        print(f"passkey on {args.model} ({session.backend.name}), replaying {n} "
              f"{'missed ' if args.misses_only else ''}prompts of {', '.join(args.replay)}")
    else:
        lengths = lengths or [parse_length(x) for x in DEFAULT_LENGTHS.split(",")]
        depths = depths or [float(x) for x in DEFAULT_DEPTHS.split(",")]
        print(f"passkey on {args.model} ({session.backend.name}), {args.trials} trials per cell")
    result = evaluate(session, lengths, depths, args.trials, args.seed, control=not args.no_control, keys=keys)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        result.update(replayed=[str(p) for p in args.replay], misses_only=args.misses_only)
    result["model"] = str(args.model)
    result["backend"] = session.backend.name
    (out / "passkey.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "passkey.png")
    print(table(result))
    print(f"written {out / 'passkey.json'} and {out / 'passkey.png'}")
    return 0

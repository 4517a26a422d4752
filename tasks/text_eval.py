"""Scoring the text model in bits per byte: through an exported artifact and the runtime (with the memory, and with
its read switched off by a fresh state at every segment), through the eager model (for tests), and the same text
compressed by ``xz -9e`` and ``zstd -19 --long`` for reference.

Bits per byte = the sum over the stream's predicted tokens of -log2 p(token), divided by the UTF-8 bytes of the
text. The stream is ``<bos> file <eos>`` per held-out file; every token after the first is predicted and counted
(``<eos>`` and the next ``<bos>`` included), and ``<bos>``/``<eos>`` stand for no bytes.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from runtime.session import InfiniSession


def token_bytes(tok) -> np.ndarray:
    """(vocab,) UTF-8 bytes each token id stands for: 1 for a byte token ``<0xNN>``, 0 for the special tokens."""
    vocab = tok.get_vocab(with_added_tokens=True)
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    special = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    for piece, i in vocab.items():
        if piece in special:
            out[i] = 0
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = 1
        else:
            out[i] = len(piece.encode("utf-8"))
    return out


def _bits_of(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log2 softmax(logits)[target] per row, float64."""
    z = logits.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=-1))
    return (lse - z[np.arange(len(targets)), targets]) / np.log(2.0)


def session_bits(session: InfiniSession, ids: np.ndarray, chunk: int = 4096, reset_every: int | None = None,
                 progress=None) -> np.ndarray:
    """(len(ids) - 1,) bits of ``ids[1:]``, each predicted from what came before it, by feeding ``ids[:-1]``
    through ``session`` (from a fresh state) in chunks. ``reset_every=N`` (the segment length): the state goes back
    to the initial one every N tokens, so each segment sees no memory of the ones before it (the local attention,
    which never crosses a segment boundary, is unchanged)."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids) - 1
    out = np.empty(n, dtype=np.float64)
    step = reset_every or chunk
    session.reset()
    for s in range(0, n, step):
        if reset_every:
            session.reset()
        e = min(n, s + step)
        for a in range(s, e, chunk):
            b = min(e, a + chunk)
            out[a:b] = _bits_of(session.feed(ids[a:b]), ids[a + 1:b + 1])
        if progress is not None:
            progress(e, n)
    return out


def eager_bits(model, ids: np.ndarray, chunk_segments: int = 8) -> np.ndarray:
    """(len(ids) - 1,) bits of ``ids[1:]`` through the eager torch model, its memory carried across the stream."""
    import torch

    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
    n = ids_t.shape[1] - 1
    L = chunk_segments * model.cfg.segment_len
    out, state = [], None
    with torch.no_grad():
        for a in range(0, n, L):
            b = min(n, a + L)
            logits, state = model(ids_t[:, a:b], state)
            out.append(_bits_of(logits[0].numpy(), ids_t[0, a + 1:b + 1].numpy()))
    return np.concatenate(out)


def bits_per_byte(bits: np.ndarray, ids: np.ndarray, tbytes: np.ndarray) -> float:
    """Total bits over the bytes the predicted tokens ``ids[1:]`` stand for."""
    return float(bits.sum() / tbytes[np.asarray(ids[1:])].sum())


def binned_bpb(bits: np.ndarray, nbytes: np.ndarray, edges: list[int]) -> list[float | None]:
    """Bits per byte of the tokens in each ``[edges[i], edges[i+1])`` range of positions."""
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        by = nbytes[a:b].sum()
        out.append(float(bits[a:b].sum() / by) if by else None)
    return out


def positions_in_file(ids: np.ndarray, bos: int) -> np.ndarray:
    """(len(ids) - 1,) position of each predicted token ``ids[1:]`` counted from its file's ``<bos>``."""
    ids = np.asarray(ids)
    idx = np.arange(len(ids))
    starts = np.where(ids == bos, idx, 0)
    last_bos = np.maximum.accumulate(starts)
    return (idx - last_bos)[1:]


def compressed_bpb(data: bytes) -> dict:
    """Bits per byte of ``data`` compressed by ``xz -9e`` and ``zstd -19 --long`` (where installed)."""
    out = {}
    for name, cmd in (("xz -9e", ["xz", "-9e", "-c"]), ("zstd -19 --long", ["zstd", "-19", "--long", "-c", "-q"])):
        if shutil.which(cmd[0]) is None:
            out[name] = None
            continue
        size = len(subprocess.run(cmd, input=data, capture_output=True, check=True).stdout)
        out[name] = 8.0 * size / len(data)
    return out


def plot_curves(res: dict, path: str | Path) -> None:
    """Three panels: bits per byte along the held-out stream and by position inside a file, memory on and off, and
    the difference by position inside a file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 4.8))
    st = res["stream_curve"]
    mids = [(a + b) / 2 for a, b in zip(st["edges"][:-1], st["edges"][1:])]
    a1.plot(mids, st["memory"], "o-", label="memory on (one stream)")
    a1.plot(mids, st["no_memory"], "s--", label="memory read off (fresh state every segment)")
    for k, v in res["compressors"].items():
        if v is not None:
            a1.axhline(v, color="gray", ls=":" if "xz" in k else "-.", label=f"{k} (whole text)")
    a1.set_xlabel("position in the held-out stream (tokens)")
    a1.set_ylabel("bits per byte")
    a1.set_title(f"{res['tokens']:,} held-out tokens, {len(res['files'])} files")
    a1.legend(fontsize=8)
    fc = res["file_curve"]
    keep = [i for i, m in enumerate(fc["memory"]) if m is not None]
    labels = [f"{fc['edges'][i]}-{fc['edges'][i + 1]}" for i in keep]
    x = np.arange(len(keep))
    a2.plot(x, [fc["memory"][i] for i in keep], "o-", label="memory on")
    a2.plot(x, [fc["no_memory"][i] for i in keep], "s--", label="memory read off")
    a2.set_xticks(x, labels, rotation=30, fontsize=8)
    a2.set_xlabel("token position inside its file")
    a2.set_ylabel("bits per byte")
    a2.set_title("by position inside a file (segment = 256 tokens)")
    a2.legend(fontsize=8)
    gain = [fc["no_memory"][i] - fc["memory"][i] for i in keep]
    a3.bar(x, gain, color=["tab:green" if g > 0 else "tab:red" for g in gain])
    a3.axhline(0, color="black", lw=0.8)
    a3.set_xticks(x, labels, rotation=30, fontsize=8)
    a3.set_xlabel("token position inside its file")
    a3.set_ylabel("bits per byte saved by the memory (off - on)")
    a3.set_title("what the memory read is worth")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export(model, out_dir: str | Path, quantize: str | None, tokenizer: str | Path | None, log=print) -> Path:
    """``export_artifact`` to ONNX (parity over 8 segments), carrying ``tokenizer`` (a tokenizer.json, or None)."""
    from exporters.pipeline import export_artifact

    export_artifact(model, out_dir, "onnx", quantize=quantize, parity_segments=8, progress=False, log=log,
                    tokenizer=tokenizer)
    return Path(out_dir)


def score_variant(checkpoint: str | Path, out_dir: str | Path, quantize: str | None, ids: np.ndarray,
                  reset: bool = False, log=print) -> tuple[np.ndarray, float]:
    """Export the checkpoint (``quantize``) into ``out_dir`` and return the bits of ``ids[1:]`` through it (with a
    fresh state every segment when ``reset``) and the seconds it all took."""
    import time

    import torch

    from infini_export import load_checkpoint
    torch.set_num_threads(1)
    t = time.time()
    model = load_checkpoint(checkpoint).eval()
    art = export(model, out_dir, quantize, Path(checkpoint) / "tokenizer.json", log)
    sess = InfiniSession.open(art)
    bits = session_bits(sess, ids, reset_every=model.cfg.segment_len if reset else None)
    return bits, time.time() - t


def evaluate(checkpoint: str | Path, work: str | Path, quantize: tuple[str, ...] = ("int8", "int4"),
             root: str | Path | None = None, max_tokens: int = 0, jobs: int = 4, exclude: tuple[str, ...] = (),
             log=print) -> dict:
    """Held-out bits per byte of the checkpoint folder (config, weights, tokenizer.json, split.json) through its
    ONNX export and the runtime: the whole held-out stream with the memory, with its read off, through each of
    ``quantize``'s exports (side by side in ``jobs`` processes, each exporting its own artifact); the compressors on
    the same text; the curves along the stream and inside files. ``max_tokens`` > 0 keeps the stream's first
    tokens only (a quick look); ``exclude``: held-out files left out of all of it."""
    import json
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from infini_export import load_checkpoint
    from . import text as T

    checkpoint, work = Path(checkpoint), Path(work)
    split = json.loads((checkpoint / "split.json").read_text())
    unknown = sorted(set(exclude) - set(split["heldout"]))
    if unknown:
        raise ValueError(f"--exclude: {unknown} are not held-out files of {checkpoint / 'split.json'}")
    files = [f for f in split["heldout"] if f not in exclude]
    tok = T.load_tokenizer(checkpoint / "tokenizer.json")
    texts = T.read_texts(root or split["root"], files)
    ids = T.encode_texts(tok, texts).astype(np.int64)
    data = "".join(texts).encode("utf-8")
    if max_tokens:
        ids = ids[:max_tokens]
    tb = token_bytes(tok)
    nbytes = tb[ids[1:]]
    if not max_tokens and nbytes.sum() != len(data):
        raise AssertionError("the tokens' bytes do not add up to the text's bytes")
    model = load_checkpoint(checkpoint)
    res = {"checkpoint": str(checkpoint), "parameters": model.num_parameters(), "config": model.cfg.to_dict(),
           "files": files, "excluded_files": list(exclude), "tokens": int(len(ids)), "bytes": int(nbytes.sum()),
           "bytes_per_token": float(nbytes.sum() / (len(ids) - 1)),
           "compressors": compressed_bpb(data) if not max_tokens else {}, "bpb": {}, "seconds": {}}
    variants = {"float32": (None, False), "float32, memory read off": (None, True), **{q: (q, False) for q in quantize}}
    bits = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futs = {name: pool.submit(score_variant, checkpoint, work / name.replace(", ", "-").replace(" ", "-"), q, ids,
                                  reset, None) for name, (q, reset) in variants.items()}
        for name, fut in futs.items():
            bits[name], secs = fut.result()
            res["bpb"][name] = bits_per_byte(bits[name], ids, tb)
            res["seconds"][name] = round(secs, 1)
            log(f"{name}: {res['bpb'][name]:.4f} bits/byte ({secs:.0f} s, export included)")
    if res["compressors"].get("xz -9e"):
        res["ratio_to_xz"] = res["bpb"]["float32"] / res["compressors"]["xz -9e"]
    on, off = bits["float32"], bits["float32, memory read off"]
    n = len(on)
    edges = list(range(0, n, 8192)) + [n]
    res["stream_curve"] = {"edges": edges, "memory": binned_bpb(on, nbytes, edges),
                           "no_memory": binned_bpb(off, nbytes, edges)}
    pos = positions_in_file(ids, tok.token_to_id(T.BOS))
    fedges = [0, 256, 512, 1024, 2048, 4096, 8192, 1 << 30]
    order = np.argsort(pos, kind="stable")
    cuts = list(np.searchsorted(pos[order], fedges))
    res["file_curve"] = {"edges": fedges[:-1] + ["end"], "tokens": [int(b - a) for a, b in zip(cuts[:-1], cuts[1:])],
                         "memory": binned_bpb(on[order], nbytes[order], cuts),
                         "no_memory": binned_bpb(off[order], nbytes[order], cuts)}
    return res


def continue_text(artifact: str | Path, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> str:
    """The continuation of ``prompt`` through an exported artifact that carries its tokenizer (its session's
    ``generate_text``)."""
    return InfiniSession.open(artifact).generate_text(prompt, max_new_tokens, temperature, top_k, top_p, seed)


def opening_lines(root: str | Path, rel: str, lines: int) -> str:
    """The first ``lines`` lines of the file ``rel`` under ``root``."""
    return "".join((Path(root) / rel).read_text(encoding="utf-8").splitlines(keepends=True)[:lines])

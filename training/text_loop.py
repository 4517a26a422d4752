"""The text model's training run: next-token loss on windows of the standard library's token stream, each window
several segments long and back-propagated through the memory across all of them."""
from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infini_export import InfiniTransformer, save_checkpoint
from tasks import text as T
from .config import TrainingSetupError
from .loop import _torch_save, load_init_weights
from .optim import build_optimizer, lr_factor
from .report import log, stop_on_signals, write_json
from .text_config import TextTrainConfig, model_config

STATE_FILE = "train_state.pt"
# the settings a report records as the run's recipe
RECIPE = ("lr", "gate_lr", "weight_decay", "warmup", "batch", "segments", "seed", "minutes", "stdlib_share")


@torch.no_grad()
def heldout_loss(model: InfiniTransformer, stream: np.ndarray, tokens: int, segments: int = 4) -> float:
    """Mean next-token loss (nats) of the eager model over the first ~``tokens`` tokens of ``stream``, cut into rows
    of ``segments`` segments that each start from an empty memory."""
    L = segments * model.cfg.segment_len
    rows = max(1, min(tokens, len(stream) - 1) // L)
    ids = torch.from_numpy(stream[:rows * L + 1].astype(np.int64))
    x, y = ids[:-1].view(rows, L), ids[1:].view(rows, L)
    total = 0.0
    for i in range(0, rows, 4):
        logits, _ = model(x[i:i + 4])
        total += float(F.cross_entropy(logits.flatten(0, 1), y[i:i + 4].flatten(), reduction="sum"))
    return total / (rows * L)


def _write_report(out: Path, rep: dict) -> None:
    write_json(out / "train_report.json", rep)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        log(f"no plot: {exc}")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    h, e = rep["history"], rep["evals"]
    if h:
        ax.plot([r["tokens"] / 1e6 for r in h], [r["loss"] for r in h], label="training loss", alpha=0.7)
    if e:
        ax.plot([r["tokens"] / 1e6 for r in e], [r["loss"] for r in e], "o-", label="held-out loss (eager)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("nats per token")
    ax.legend()
    ax.set_title(f"text model training: {rep['preset']} ({rep['parameters']:,} params)")
    fig.tight_layout()
    fig.savefig(out / "train_report.png", dpi=100)
    plt.close(fig)


class _TextRun:
    def __init__(self, tc: TextTrainConfig, argv: list[str]):
        self.tc = tc
        data = Path(tc.data)
        tok_path, split_path = data / "tokenizer.json", data / "split.json"
        for p in (tok_path, split_path):
            if not p.is_file():
                raise TrainingSetupError(f"--data: {p} does not exist (build it with scripts/text_data.py)")
        t = time.time()
        self.data = T.load_streams(split_path, tok_path, tc.cache, tc.root, tc.site)
        log(f"streams: {len(self.data.train):,} training tokens (+ {len(self.data.extra):,} from other packages, "
            f"{tc.stdlib_share:.0%} of windows from the standard library), {len(self.data.heldout):,} held-out tokens "
            f"({self.data.heldout_bytes / len(self.data.heldout):.2f} bytes per token) in {time.time() - t:.1f} s")
        vocab = T.load_tokenizer(tok_path).get_vocab_size()
        self.cfg = cfg = model_config(tc.preset, vocab)
        self.out = Path(tc.out)
        self.out.mkdir(parents=True, exist_ok=True)
        for p in (tok_path, split_path):
            if p.resolve() != (self.out / p.name).resolve():
                shutil.copyfile(p, self.out / p.name)
        self.state_path = self.out / STATE_FILE
        torch.manual_seed(tc.seed)
        self.model = InfiniTransformer(cfg)
        self.opt = build_optimizer(self.model, tc.lr, tc.gate_lr, tc.weight_decay)
        self.rng = np.random.default_rng(tc.seed)
        self.tr = {"step": 0, "elapsed": 0.0, "tokens": 0, "history": [], "evals": [], "runs": [], "init_weights": None}
        if tc.resume:
            self._resume()
        elif tc.init_weights:
            self._init_weights()
        self.tr["runs"].append({"argv": list(argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "start_step": self.tr["step"], "stdlib_share": tc.stdlib_share,
                                "data": {"split_sha256": T.file_hash(split_path),
                                         "tokenizer_sha256": T.file_hash(tok_path)}})
        self.model.train()
        self.seq_len = tc.segments * cfg.segment_len
        log(f"{tc.preset}: {self.model.num_parameters():,} params, vocab {vocab}, segment_len {cfg.segment_len}, "
            f"{tc.batch} x {tc.segments} segments per step, threads={torch.get_num_threads()}, budget "
            f"{tc.minutes} min / {tc.steps or '-'} steps, out={self.out}")

    def _resume(self) -> None:
        if not self.state_path.is_file():
            raise TrainingSetupError(f"--resume: {self.state_path} does not exist")
        ck = torch.load(self.state_path, map_location="cpu", weights_only=False)
        if ck["config"] != self.cfg.to_dict():
            raise TrainingSetupError(f"--resume: {self.state_path} was trained with another config: {ck['config']}")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.tr = ck["train"]
        self.rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {self.state_path}: step {self.tr['step']}, {self.tr['elapsed'] / 60:.1f} min")

    def _init_weights(self) -> None:
        load_init_weights(self.model, self.tc.init_weights, f"--preset {self.tc.preset}")
        self.tr["init_weights"] = str(self.tc.init_weights)
        log(f"fresh run from the weights of {self.tc.init_weights} (new optimizer and schedule)")

    def save(self, final: bool) -> dict:
        _torch_save({"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                     "optimizer": self.opt.state_dict(), "train": self.tr,
                     "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "args": dataclasses.asdict(self.tc)}, self.state_path)
        save_checkpoint(self.model, self.out)
        tc, tr = self.tc, self.tr
        rep = {"preset": tc.preset, "config": self.cfg.to_dict(), "parameters": self.model.num_parameters(),
               "steps": tr["step"], "tokens": tr["tokens"], "train_minutes": round(tr["elapsed"] / 60, 2),
               "final": final, "recipe": {k: getattr(tc, k) for k in RECIPE},
               "heldout_loss": tr["evals"][-1]["loss"] if tr["evals"] else None,
               "init_weights": tr["init_weights"],
               "runs": tr["runs"], "evals": tr["evals"], "history": tr["history"]}
        _write_report(self.out, rep)
        return rep

    def evaluate(self) -> dict:
        t = time.time()
        self.model.eval()
        loss = heldout_loss(self.model, self.data.heldout, self.tc.eval_tokens)
        self.model.train()
        bpt = len(self.data.heldout) / self.data.heldout_bytes
        rec = {"step": self.tr["step"], "tokens": self.tr["tokens"], "minutes": round(self.tr["elapsed"] / 60, 2),
               "loss": loss, "bpb": loss / math.log(2) * bpt}
        self.tr["evals"].append(rec)
        log(f"held-out loss {loss:.3f} nats/token, ~{rec['bpb']:.3f} bits/byte at step {rec['step']} "
            f"({time.time() - t:.1f} s)")
        return rec

    def step(self) -> tuple[float, int]:
        tc, tr = self.tc, self.tr
        budget_s = tc.minutes * 60.0 if tc.minutes > 0 else float("inf")
        progress = max(tr["step"] / tc.steps if tc.steps else 0.0, tr["elapsed"] / budget_s)
        f = lr_factor(tr["step"], progress, tc.warmup)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        ids = torch.from_numpy(T.sample_windows(self.rng, self.data, tc.batch, self.seq_len, tc.stdlib_share))
        logits, _ = self.model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        tr["step"] += 1
        tr["tokens"] += tc.batch * self.seq_len
        return float(loss.detach()), tc.batch * self.seq_len


def train_text(tc: TextTrainConfig, argv: list[str] | None = None) -> dict:
    """Train (or go on training) the text model of ``tc`` until its step or wall-time budget, SIGTERM or SIGINT (the
    step finishes and everything is saved). Writes OUT/config.json + model.safetensors, tokenizer.json, split.json,
    train_report.json / .png and train_state.pt (for --resume). Returns the final report."""
    run = _TextRun(tc, sys.argv if argv is None else argv)
    tr = run.tr
    with stop_on_signals() as stop:
        budget_s = tc.minutes * 60.0 if tc.minutes > 0 else float("inf")
        t_last = t_log = t_eval = t_save = time.time()
        acc = {"loss": 0.0, "n": 0, "tok": 0}
        while not stop["flag"] and not (tc.steps and tr["step"] >= tc.steps) and tr["elapsed"] < budget_s:
            loss, ntok = run.step()
            now = time.time()
            tr["elapsed"] += now - t_last
            t_last = now
            acc["loss"] += loss
            acc["n"] += 1
            acc["tok"] += ntok
            if now - t_log >= tc.log_every:
                rec = {"step": tr["step"], "tokens": tr["tokens"], "minutes": round(tr["elapsed"] / 60, 2),
                       "loss": acc["loss"] / acc["n"], "lr": run.opt.param_groups[0]["lr"],
                       "tokens_per_s": acc["tok"] / max(1e-6, now - t_log),
                       "gates": [round(float(torch.sigmoid(b.attn.beta.detach()).mean()), 3) for b in run.model.blocks]}
                tr["history"].append(rec)
                log(f"step {rec['step']:5d} | {rec['minutes']:5.1f} min | {rec['tokens'] / 1e6:6.2f}M tokens | loss "
                    f"{rec['loss']:.3f} | lr {rec['lr']:.2e} | {rec['tokens_per_s']:.0f} tok/s | gates {rec['gates']}")
                acc, t_log = {"loss": 0.0, "n": 0, "tok": 0}, now
            if now - t_eval >= tc.eval_every * 60:
                run.evaluate()
                t_eval = t_last = time.time()
                tr["elapsed"] += t_eval - now
            if now - t_save >= tc.save_every * 60:
                run.save(final=False)
                t_save = time.time()
        run.model.eval()
        if not stop["flag"] and (not tr["evals"] or tr["evals"][-1]["step"] != tr["step"]):
            run.evaluate()
        rep = run.save(final=not stop["flag"])
        log(f"done: {tr['step']} steps, {tr['tokens']:,} tokens, {tr['elapsed'] / 60:.1f} min, held-out loss "
            f"{rep['heldout_loss']}; wrote {run.out}")
        return rep

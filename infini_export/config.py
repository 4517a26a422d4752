"""Model configuration: one frozen dataclass, checked on construction."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write

UPDATE_RULES = ("linear", "delta")


@dataclass(frozen=True)
class InfiniConfig:
    """Hyper-parameters of an Infini-Transformer (decoder-only LM).

    Every field is validated in ``__post_init__``; a bad value raises ``ValueError`` naming the
    field and what is allowed.
    """

    vocab_size: int = 256  # tokens; byte-level by default
    d_model: int = 128  # residual stream width
    n_layers: int = 3  # number of pre-norm blocks
    n_heads: int = 4  # attention heads per layer (each has its own memory)
    d_head: int = 32  # per-head width; memory is d_head x d_head per head (d_key = d_value)
    d_ff: int = 704  # hidden width of the SwiGLU feed-forward
    segment_len: int = 128  # N: tokens per segment; local attention never crosses it
    update: str = "delta"  # memory write rule: "linear" (eq 8) or "delta" (eq 9)
    rope_base: float = 10000.0  # RoPE base, local attention path only
    norm_eps: float = 1e-5  # RMSNorm epsilon
    memory_eps: float = 1e-6  # added to the memory-read denominator: a zero state reads as zero
    tie_embeddings: bool = True  # LM head shares the token-embedding matrix

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"InfiniConfig.{name} = {getattr(self, name)!r} is invalid: expected {allowed}"
                )

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_ff", "segment_len"):
            value = getattr(self, name)
            check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  "an integer >= 1")
        check("d_head", self.d_head % 2 == 0, "an even integer (RoPE rotates pairs)")
        check("segment_len", self.segment_len <= 8192, "an integer in [1, 8192]")
        check("update", self.update in UPDATE_RULES, f"one of {UPDATE_RULES}")
        check("rope_base", isinstance(self.rope_base, (int, float)) and self.rope_base > 1.0,
              "a number > 1")
        check("norm_eps", isinstance(self.norm_eps, (int, float)) and 0.0 < self.norm_eps < 1.0,
              "a number in (0, 1)")
        check("memory_eps", isinstance(self.memory_eps, (int, float)) and 0.0 < self.memory_eps < 1.0,
              "a number in (0, 1)")
        check("tie_embeddings", isinstance(self.tie_embeddings, bool), "True or False")

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InfiniConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown InfiniConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write(path, lambda f: f.write((text + "\n").encode()))
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "InfiniConfig":
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "InfiniConfig":
        """A named preset (``tiny``, ``small``, ``medium``; ``small-32k``, ``base-32k``), optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    # ---- derived sizes -------------------------------------------------------------------------
    def state_numbers_per_layer(self) -> int:
        """d_key * (d_value + 1) * H: the paper's Table 1 footprint of one layer."""
        return self.n_heads * self.d_head * (self.d_head + 1)

    def state_bytes(self, batch_size: int = 1) -> int:
        """Bytes of the whole recurrent state (float32), all layers."""
        return 4 * batch_size * self.n_layers * self.state_numbers_per_layer()


PRESETS: dict[str, InfiniConfig] = {
    # for tests: fast to build, export and run
    "tiny": InfiniConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_head=16, d_ff=64,
                         segment_len=16),
    # the passkey model: ~1.0M parameters, byte-level
    "small": InfiniConfig(vocab_size=256, d_model=128, n_layers=3, n_heads=4, d_head=32, d_ff=704,
                          segment_len=128),
    # ~20M parameters, for benchmarks
    "medium": InfiniConfig(vocab_size=256, d_model=512, n_layers=6, n_heads=8, d_head=64, d_ff=1536,
                           segment_len=512),
    # ---- real (sub-word) vocabularies: the embedding and the LM head dominate small models ----
    # for tests of real-size export paths: a 32000-token vocabulary, ~9M parameters (8.2M of them the
    # tied embedding); every linear's in_features (128, 384) is a multiple of 32 and 128 (int4 blocks)
    "small-32k": InfiniConfig(vocab_size=32000, d_model=256, n_layers=2, n_heads=4, d_head=64, d_ff=384,
                              segment_len=256),
    # the paper's 110M-class model (~110M parameters, 24.6M of them the tied 32000 x 768 embedding):
    # 12 layers of d_model 768 (12 heads of 64), SwiGLU width 2048, segments of 2048 tokens;
    # state 12 x 12 x 64 x 65 float32 = 2.4 MB whatever the input length
    "base-32k": InfiniConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, d_head=64, d_ff=2048,
                             segment_len=2048),
}

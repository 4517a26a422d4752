"""The peer benchmark's pure helpers (benchmarks.peer): the Llama twin of a preset, the context syntax, the bytes
a decode token reads and the record's summary. Needs neither onnxruntime-genai nor transformers."""
from __future__ import annotations

import pytest

from benchmarks import peer
from infini_export import InfiniConfig


@pytest.mark.parametrize("preset", ["small-32k", "base-32k"])
def test_llama_twin_has_our_parameters_but_the_memory_gates(preset):
    torch = pytest.importorskip("torch")
    from infini_export import InfiniTransformer

    cfg = InfiniConfig.from_name(preset)
    with torch.device("meta"):
        ours = sum(p.numel() for p in InfiniTransformer(cfg).parameters())
    llama = peer.llama_config(cfg)
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["intermediate_size"]) == (
        cfg.d_model, cfg.n_layers, cfg.d_ff)
    assert llama["num_key_value_heads"] == llama["num_attention_heads"] == cfg.n_heads
    assert llama["tie_word_embeddings"] is True
    assert ours - peer.llama_parameters(llama) == cfg.n_layers * cfg.n_heads  # one gate per head and layer


def test_contexts():
    assert peer.parse_contexts("1K, 4K+1K,16K+1K") == [(0, 1024), (4096, 1024), (16384, 1024)]
    assert [peer.context_label(*c) for c in peer.parse_contexts("1K,32K+1K")] == ["1K", "32K+1K"]
    with pytest.raises(ValueError):
        peer.parse_contexts("1K+2K+3K")


def test_decode_bytes():
    cfg = InfiniConfig.from_name("base-32k")
    ours = peer.decode_bytes(cfg, 4, 1024, memory=True)
    assert ours["weights"] == 4 * 109_529_856
    assert ours["cache"] == 2 * 12 * 768 * 1024 * 4
    assert ours["state"] == 12 * 12 * (64 * 64 + 64) * 4
    assert peer.decode_bytes(cfg, 4, 1024, memory=False)["state"] == 0


def _run(ms, tok_s, rss, r):
    return {"round": r, "peak_rss_mb": rss, "contexts": [
        {"prefix": p, "tail": 1024, "context": p + 1024, "decode_ms_median": m, "prefill_tok_s": t}
        for p, m, t in zip((0, 4096), ms, tok_s)]}


def test_summary_ratios_are_per_round_and_the_record_has_its_parts():
    record = {"precisions": ["fp32"], "contexts": ["1K", "4K+1K"], "context_tokens": [1024, 5120], "new_tokens": 8,
              "read_bandwidth_bytes_s": {"fp32": [10e9, 12e9]}, "preset": "base-32k", "threads": 2, "rounds": 2,
              "runs": {"ours-fp32": [_run((40, 40), (600, 600), 900, 0), _run((80, 80), (300, 300), 910, 1)],
                       "theirs-fp32": [_run((20, 60), (300, 200), 1500, 0), _run((40, 120), (150, 100), 1400, 1)]}}
    record["summary"] = s = peer.summarize(record)
    rows = s["fp32"]["contexts"]
    assert [r["decode_ratio"] for r in rows] == [0.5, 1.5]  # theirs / ours within each round
    assert [r["prefill_ratio"] for r in rows] == [2.0, 3.0]
    assert (s["fp32"]["ours_peak_rss_mb"], s["fp32"]["theirs_peak_rss_mb"]) == (910, 1500)
    bw = peer.bandwidth_fraction(record, InfiniConfig.from_name("base-32k"))
    assert bw["read_bandwidth_gb_s"] == [10.0, 12.0]
    assert [c["context"] for c in bw["contexts"]] == ["1K", "4K+1K"]
    assert all(0 < c["ours_fraction"] for c in bw["contexts"])
    assert "| fp32 | 4K+1K |" in peer.table(record)


def test_our_cached_export_is_redone_when_the_exporter_changes(tmp_path, monkeypatch):
    exports = []

    def fake_child(kind, job, python):
        exports.append(job["out"])
        (tmp_path / "p" / "ours-fp32").mkdir(parents=True, exist_ok=True)
        (tmp_path / "p" / "ours-fp32" / "manifest.json").write_text("{}")
    monkeypatch.setattr(peer, "_child", fake_child)
    quiet = lambda *a: None  # noqa: E731
    out = peer.ensure_ours("p", tmp_path, "fp32", log=quiet)
    peer.ensure_ours("p", tmp_path, "fp32", log=quiet)
    assert exports == [str(out)]  # the same code: reused
    monkeypatch.setattr(peer, "export_code_hash", lambda: "other code")
    peer.ensure_ours("p", tmp_path, "fp32", log=quiet)
    assert exports == [str(out)] * 2  # another exporter: exported again

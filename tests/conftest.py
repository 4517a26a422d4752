import os
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny models: one thread is faster than two (no synchronisation), and CI shares its cores
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def traced_programs(tmp_path_factory):
    """Every ONNX export of the run, in the test processes and in the processes tests start, reads the programs
    traced before it (exporters.trace_cache): a program is traced once per run, every export still checked."""
    from exporters.trace_cache import ENV
    from tests.shared import shared_root
    os.environ[ENV] = str(shared_root(tmp_path_factory) / "traced")
    yield
    os.environ.pop(ENV, None)


@pytest.fixture
def tiny_cfg():
    from infini_export import InfiniConfig
    return InfiniConfig.from_name("tiny")


def make_model(update="delta", seed=0, **overrides):
    from infini_export import InfiniConfig, InfiniTransformer
    torch.manual_seed(seed)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", update=update, **overrides)).eval()
    # move gates off their initial 0 so each head mixes differently
    with torch.no_grad():
        for block in model.blocks:
            block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
    return model


@pytest.fixture(scope="session")
def onnx_artifacts(tmp_path_factory):
    """The tiny preset exported to ONNX once per update rule and test run: {update: (model, artifact_dir)}, each
    exported on first access (tests/shared.py; ``INFINI_TEST_EXECUTORCH_CACHE`` keeps them too)."""
    from tests.et_artifacts import CACHE_ENV
    from tests.shared import Lazy, build_once, shared_root
    root = shared_root(tmp_path_factory, CACHE_ENV)

    def export(update):
        def build(d):
            from exporters.pipeline import export_artifact
            export_artifact(make_model(update), d, "onnx", parity_segments=8, progress=False, log=None)
            return {}
        return make_model(update), build_once(root, f"onnx-{update}", build)[0]
    return Lazy(("linear", "delta"), export)


# parity segments of the shared quantized exports: int4's agreement is measured over many
QUANTIZED_PARITY = {"int8": 4, "int4": 40}


@pytest.fixture(scope="session")
def onnx_quantized(tmp_path_factory):
    """The tiny preset (delta rule) exported to ONNX in int8 and in int4 once per test run:
    {precision: (model, artifact_dir, the pipeline's parity report as a dict, with its summary)}."""
    from tests.et_artifacts import CACHE_ENV
    from tests.shared import Lazy, build_once, shared_root
    root = shared_root(tmp_path_factory, CACHE_ENV)

    def export(quantize):
        def build(d):
            from exporters.pipeline import export_artifact
            _, report = export_artifact(make_model("delta"), d, "onnx", quantize=quantize, progress=False, log=None,
                                        parity_segments=QUANTIZED_PARITY[quantize])
            return {**report.to_dict(), "summary": report.summary}
        folder, report = build_once(root, f"onnx-{quantize}", build)
        return make_model("delta"), folder, report
    return Lazy(tuple(QUANTIZED_PARITY), export)


# parity segments of the shared exports of the infini-transformer-pytorch adapter (3 segment boundaries decoded across)
ADAPTER_PARITY = 4


@pytest.fixture(scope="session")
def adapter_onnx(tmp_path_factory):
    """The adapter of an infini-transformer-pytorch model (tests/test_adapter_lucidrains.py's ``linear``: GroupQueryAttention
    decode, and ``delta``: the masked one) exported to ONNX once per test run: {name: (adapter, artifact_dir, the
    pipeline's parity report as a dict)}."""
    from tests.et_artifacts import CACHE_ENV
    from tests.shared import Lazy, build_once, shared_root
    root = shared_root(tmp_path_factory, CACHE_ENV)

    def adapter(name):
        from infini_export.adapters.lucidrains import LucidrainsStep
        from tests.test_adapter_lucidrains import SEG, make_theirs
        return LucidrainsStep(make_theirs(name), SEG).eval()

    def export(name):
        def build(d):
            from exporters.pipeline import export_artifact
            _, report = export_artifact(adapter(name), d, "onnx", parity_segments=ADAPTER_PARITY, progress=False,
                                        log=None)
            return report.to_dict()
        folder, report = build_once(root, f"adapter-onnx-{name}", build)
        return adapter(name), folder, report
    return Lazy(("linear", "delta"), export)


@pytest.fixture(scope="session")
def et_artifacts(tmp_path_factory):
    """{(update, variant[, max_batch]): (model, artifact_dir, manifest, pipeline parity report)} (tests/et_artifacts.py);
    ``INFINI_TEST_EXECUTORCH_CACHE`` keeps them in a folder between runs (development only)."""
    from tests.et_artifacts import CACHE_ENV, artifacts
    from tests.shared import shared_root
    return artifacts(shared_root(tmp_path_factory, CACHE_ENV))


def check_session_matches_forward(model, art, segments: int = 50, batch: int = 2):
    """Independent path: an artifact's session streaming loop vs the model's own forward, ``batch`` rows, with a
    5-token partial segment at the end (logits of every token, then the state of the complete segments)."""
    import numpy as np
    from runtime import InfiniSession
    N = model.cfg.segment_len
    ids = torch.randint(0, 256, (batch, segments * N + 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref_logits, _ = model(ids)
        _, ref_state = model(ids[:, :segments * N])
    session = InfiniSession.open(art, batch_size=batch)
    logits = session.feed(ids.numpy())
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=1e-4)
    state = session.state
    for i, mem in enumerate(ref_state):
        np.testing.assert_allclose(state[f"memory.{i}"], mem.memory.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state[f"norm.{i}"], mem.norm.numpy(), rtol=1e-5, atol=1e-5)
    assert session.pending_tokens.shape == (batch, 5)
    assert session.tokens_consumed == segments * N + 5


def rehash_manifest(art) -> None:
    """Rewrite the manifest's sha256 and byte count of every file as they are now (a deliberately altered file then
    passes the integrity check, so what refuses it is the loader itself)."""
    import json

    from runtime.manifest import sha256_file
    man = json.loads((art / "manifest.json").read_text())
    for entry in man["files"].values():
        entry["sha256"] = sha256_file(art / entry["path"])
        entry["bytes"] = (art / entry["path"]).stat().st_size
    (art / "manifest.json").write_text(json.dumps(man))


FUZZ_COUNTS = pytest.StashKey[dict]()


@pytest.fixture
def fuzz_counts(request):
    """{kind: cases run}, shared by the fuzz tests and printed in the terminal summary of every run."""
    return request.config.stash.setdefault(FUZZ_COUNTS, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(FUZZ_COUNTS, None)
    if counts:
        terminalreporter.write_line("fuzzed cases: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                                    + f" (total {sum(counts.values()):,})")


# ---- which tests are slow, and the order the files start in --------------------------------------------------------
# ``slow``: the tests ``make test-fast`` leaves out (``make test`` runs everything). Besides the tests marked in their
# files, every test of an ExecuTorch artifact (the ``et_artifacts`` fixture: 20-80 s an export) and these, each an
# export of more than the tiny preset's two shared ONNX artifacts, or a process of its own that imports torch:
SLOW = {
    "test_bundled_passkey.py": "exports the bundled model",
    "test_bench_smoke.py::test_bench_smoke": "scripts/bench.py: every backend exported and timed",
    "test_concurrency_precision.py::test_float16_weights_float32_state_validated": "a float16 export",
    "test_decode.py::test_executorch_decode_method": "an ExecuTorch export",
    "test_decode.py::test_adapter_decode_exports_with_parity": "an export of the adapter",
    "test_executorch.py": "ExecuTorch exports",
    "test_executorch_lower.py": "ExecuTorch exports",
    "test_extrapolation_check.py::test_proxy_score_script_reports_the_training_proxy": "a script's process",
    "test_extrapolation_check.py::test_extrapolation_check_script_prints_and_writes_the_check": "a script's process",
    "test_kill_resume.py": "processes killed and resumed",
    "test_last_logits.py::test_adapter_last_program_exports_with_parity": "an export of the adapter",
    "test_lucidrains_export.py": "exports of the adapter",
    "test_onnx_graph_rewrites.py::test_export_with_attention_blocks_passes_parity_and_records_them": "an export",
    "test_passkey_cli.py": "an export and the passkey command",
    "test_protocol.py::test_a_custom_step_module_is_exported_run_and_validated": "an export of another module",
    "test_quantize_int4.py": "int4 and int8 exports",
    "test_quantize_lookup.py": "exports of a 32K vocabulary",
    "test_real_size.py": "the 110M preset's shapes",
    "test_train_smoke.py": "training processes",
    "test_decode.py::test_exported_decode_parity_and_manifest": "decode parity over many calls",
    "test_fuzz_manifest.py::test_fuzzed_manifests_are_opened_or_refused_with_a_typed_error": "thousands of cases",
    "test_fuzz_statefile.py::test_fuzzed_state_files_load_or_are_refused": "thousands of cases",
    "test_long_stream.py": "200K tokens through eager and ONNX",
    "test_low_memory.py::test_the_runtime_order_frees_each_layers_keys_and_values_before_the_next_layer": "an export",
    "test_runtime_wheel.py": "a virtual environment made from the wheel, its processes",
    "test_head_sizes.py::test_every_head_size_exports_and_generates_as_eager": "an export per head size",
    "test_onnx_packed.py::test_quantized_exports_pack_their_own_products": "int8 and int4 exports",
    "test_onnx_packed.py::test_quantized_fused_graphs_equal_the_unfused_ones": "int8 and int4 exports",
    "test_portable_onnx.py::test_portable_graphs_hold_standard_ops_only": "an export with standard ops only",
    "test_portable_onnx.py::test_onnx_reference_evaluator_runs_the_portable_segment_step": "the same export",
}
# files that take longest start first, so that the last file to finish is a short one (``--dist loadfile`` hands
# out whole files, in this order, to the two workers). The first file builds the shared ExecuTorch artifacts in one
# worker while the other runs files that need none of them; the other files that read them come after, so that no
# worker waits on another's export.
FIRST = ["test_executorch.py", "test_lucidrains_export.py", "test_real_size.py", "test_bundled_passkey.py",
         "test_web.py", "test_runtime_wheel.py", "test_long_stream.py", "test_low_memory.py", "test_train_smoke.py",
         "test_bench_smoke.py", "test_head_sizes.py", "test_quantize_lookup.py", "test_concurrency_precision.py",
         "test_quantize_int4.py", "test_passkey_cli.py", "test_session_behaviour.py",
         "test_decode.py", "test_executorch_lower.py", "test_last_logits.py", "test_decode_chunk.py"]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        name = path + "::" + item.nodeid.split("::", 1)[1].split("[")[0] if "::" in item.nodeid else path
        if path in SLOW or name in SLOW or "et_artifacts" in getattr(item, "fixturenames", ()) \
                or "[executorch" in item.nodeid:  # a test run on each backend, here an ExecuTorch one
            item.add_marker(pytest.mark.slow)
    rank = {f: i for i, f in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].rsplit("/", 1)[-1], len(FIRST)))

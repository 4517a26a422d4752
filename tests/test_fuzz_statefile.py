"""Fuzzed state files: edited members (names, headers, dtypes, shapes, compression, data, meta) and damaged
bytes. ``load_state`` either loads exactly what numpy reads from the file or raises a typed error with a
message, leaving the session as it was, with the peak RSS within 16 MB of where it started."""
import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from runtime import InfiniRuntimeError, InfiniSession, Manifest
from tests.guards import PEAK_RSS_RESETTABLE, opened_files, peak_rss_growth, reads_under
from tests.manifest_fuzz import base_manifest
from tests.statefile_fuzz import apply_byte_edit, apply_member_edit, byte_edit, join, member_edit, split
from tests.no_program import NoProgram

RSS_BOUND = 16 << 20
BATCH, CASES = 20, 3000


@pytest.fixture(scope="module")
def session_and_file(tmp_path_factory):
    """A session of the tiny layout (no program needed: load_state never runs it) and a state file it wrote."""
    folder = tmp_path_factory.mktemp("state_fuzz")
    s = InfiniSession(Manifest.from_dict(base_manifest()), NoProgram())
    rng = np.random.default_rng(0)
    s.set_state({k: rng.standard_normal(v.shape).astype(np.float32) for k, v in s.state.items()},
                np.array([[1, 2, 3, 4, 5]]), 37)
    s.save_state(folder / "base.npz")
    return s, (folder / "base.npz").read_bytes(), folder


def snapshot(s):
    return s.state, s.pending_tokens, s.tokens_consumed, s.batch_size


def restore(s, snap):
    s.set_state(snap[0], snap[1], snap[2])


def assert_same(s, snap):
    for k, v in snap[0].items():
        np.testing.assert_array_equal(s.state[k], v)
    np.testing.assert_array_equal(s.pending_tokens, snap[1])
    assert (s.tokens_consumed, s.batch_size) == snap[2:]


def test_fuzzed_state_files_load_or_are_refused(session_and_file, fuzz_counts):
    s, blob, folder = session_and_file
    path = folder / "case.npz"
    snap = snapshot(s)
    outcome = {"accepted": 0, "refused": 0}
    case_edit = st.tuples(st.lists(member_edit(), max_size=3), st.lists(byte_edit, max_size=1))

    @settings(max_examples=CASES // BATCH, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(case_edit, min_size=BATCH, max_size=BATCH))
    def case(batch):
        for member_edits, byte_edits in batch:
            members, methods = split(blob), {}
            for edit in member_edits:
                members = apply_member_edit(members, methods, edit)
            data = join(members, methods) if member_edits else blob
            for edit in byte_edits:
                data = apply_byte_edit(data, edit)
            path.write_bytes(data)
            with opened_files() as seen:
                if PEAK_RSS_RESETTABLE:
                    error, growth = peak_rss_growth(lambda: s.load_state(path), collect=False)
                else:
                    error, growth = None, 0
                    try:
                        s.load_state(path)
                    except Exception as exc:  # noqa: BLE001
                        error = exc
            assert set(reads_under(seen, folder.parent)) <= {os.path.realpath(path)}  # the file, nothing beside
            if error is None:
                outcome["accepted"] += 1
                with np.load(io.BytesIO(data), allow_pickle=False) as ref:  # safe now: checked above
                    for k, v in s.state.items():
                        np.testing.assert_array_equal(v, ref[f"state/{k}"])
                    np.testing.assert_array_equal(s.pending_tokens, ref["pending"])
                restore(s, snap)
                continue
            outcome["refused"] += 1
            if not isinstance(error, InfiniRuntimeError):
                raise AssertionError(f"raw {type(error).__name__} escaped: {error!r}") from error
            assert str(error).strip()
            assert growth <= RSS_BOUND, f"refused load grew the peak RSS by {growth / 2**20:.1f} MB: {error}"
            assert_same(s, snap)

    case()
    fuzz_counts["state files"] = fuzz_counts.get("state files", 0) + sum(outcome.values())
    assert sum(outcome.values()) >= CASES * 0.9 and outcome["accepted"] >= 20 and outcome["refused"] >= 1000, outcome

"""The JavaScript runtime (web/): its Node tests and the demo page in headless Chromium (``make test-web``: the
bundled models exported to out/, the Python runtime's goldens on them, then ``node --test``), run as one test so
that they share the machine with the Python tests rather than follow them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_javascript_runtime_and_demo_page():
    missing = [what for what, ok in (("node", shutil.which("node")), ("make", shutil.which("make")),
                                     ("web/node_modules (make web-deps)",
                                      (ROOT / "web" / "node_modules" / ".installed").is_file())) if not ok]
    if missing:
        why = f"the JavaScript tests need {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    venv = Path(sys.prefix)  # the Makefile's environment is this one: its targets are up to date
    proc = subprocess.run(["make", "--no-print-directory", "test-web", f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    failed = [line for line in out.splitlines() if line.lstrip().startswith("not ok")]
    assert proc.returncode == 0, "\n".join(failed[:20]) + "\n...\n" + out[-6000:]
    summary = {k: int(v) for k, v in (line[2:].split() for line in out.splitlines()
                                      if line.startswith(("# pass ", "# fail ", "# tests ", "# skipped ")))}
    assert summary.get("fail") == 0 and summary["pass"] + summary["skipped"] == summary["tests"] > 100, summary

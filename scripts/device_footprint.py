#!/usr/bin/env python
"""The runtime on a device: its wheel installed in a new virtual environment (no torch, no toolchain), that
environment's size against the toolchain's, and ``infini-run generate`` there (prefill / decode tok/s, peak RSS).

    infini-export export models/passkey-small --format onnx -o out/onnx
    python scripts/device_footprint.py --artifact out/onnx --prompt-file README.md -n 200
"""
from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
from pathlib import Path

from benchmarks.device import build_runtime_wheel, device_env, device_run, dir_bytes, parse_speed

NOT_INSTALLED = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth", "__pycache__")


def site_packages(python: Path) -> Path:
    return next(Path(python).parent.parent.glob("lib/python3*/site-packages"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", default="out/onnx", help="an exported artifact folder")
    p.add_argument("--prompt-file", default="README.md", help="the prompt (its text, or bytes for byte-level models)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="generate runs (the fastest prefill and decode count)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    art, prompt = Path(args.artifact).resolve(), Path(args.prompt_file).resolve()
    if not (art / "manifest.json").is_file():
        p.error(f"{art} is not an artifact folder: export one first (infini-export export ... -o {args.artifact})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = build_runtime_wheel(tmp / "dist")
        python = device_env(tmp / "venv", wheel)
        ours = Path(sysconfig.get_paths()["purelib"])
        sizes = {"wheel_bytes": wheel.stat().st_size,
                 "device_site_packages_bytes": dir_bytes(site_packages(python), NOT_INSTALLED),
                 "toolchain_site_packages_bytes": dir_bytes(ours, NOT_INSTALLED)}
        runs = []
        for _ in range(args.repeats):
            cmd = [python.parent / "infini-run", "generate", art, "--prompt-file", prompt, "-n", args.max_new_tokens,
                   "--quiet", *(["--threads", args.threads] if args.threads else [])]
            res = device_run(cmd, tmp)
            if res.returncode:
                print(res.stderr.decode(), file=sys.stderr)
                return 1
            runs.append(parse_speed(res.stderr.decode()))
    best = {"prefill_tok_s": max(r["prefill_tok_s"] for r in runs), "decode_tok_s": max(r["decode_tok_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    mb = {k: v / 2 ** 20 for k, v in sizes.items()}
    print(f"wheel {mb['wheel_bytes']:.2f} MB; installed with its requirements {mb['device_site_packages_bytes']:,.0f} MB "
          f"vs the toolchain's environment {mb['toolchain_site_packages_bytes']:,.0f} MB "
          f"({sizes['toolchain_site_packages_bytes'] / sizes['device_site_packages_bytes']:.1f}x)", file=sys.stderr)
    print(f"infini-run generate, {runs[0]['prompt_tokens']:,}-token prompt, {runs[0]['new_tokens']} new tokens, best of "
          f"{len(runs)}: prefill {best['prefill_tok_s']:,.0f} tok/s, decode {best['decode_tok_s']:,.1f} tok/s, "
          f"peak RSS {best['peak_rss_mb']:,.0f} MB", file=sys.stderr)
    print(json.dumps({**sizes, "artifact": str(art), "runs": runs, "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

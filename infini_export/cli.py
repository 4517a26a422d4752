"""The ``infini-export`` command line."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    cfg = model.cfg
    per_layer = 4 * cfg.state_numbers_per_layer()
    info = {
        "config": cfg.to_dict(),
        "parameters": model.num_parameters(),
        "state_bytes_per_layer": per_layer,
        "state_bytes_total": cfg.state_bytes(1),
        "state_numbers_total": cfg.n_layers * cfg.state_numbers_per_layer(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint: {args.checkpoint}")
    for key, value in cfg.to_dict().items():
        print(f"  {key:<15} {value}")
    print(f"parameters:      {info['parameters']:,}")
    print(f"state per layer: {per_layer:,} bytes (H*dk*(dv+1) = {cfg.state_numbers_per_layer():,} float32)")
    print(f"state in total:  {info['state_bytes_total']:,} bytes for batch 1, whatever the input length")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infini-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and state size")
    p.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"infini-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

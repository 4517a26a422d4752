"""The ``infini-export`` command line: info, average, export, validate, run, passkey, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.cli.main import add_commands, run_command

from .quiet import silence_third_party

TORCH_COMMANDS = ("export", "validate", "demo", "average")  # the commands that load torch anyway


def _load_module(args: argparse.Namespace):
    """Our checkpoint folder, or a model trained elsewhere through an adapter (``--from``)."""
    source = getattr(args, "source", "infini-export")
    if source == "lucidrains":
        from infini_export.adapters.lucidrains import load_lucidrains
        if not (args.weights and args.kwargs and args.segment_len):
            raise ValueError("--from lucidrains needs --weights STATE_DICT.pt, --kwargs MODEL_KWARGS.json "
                             "and --segment-len N")
        return load_lucidrains(args.weights, args.kwargs, args.segment_len)
    from infini_export.checkpoint import load_checkpoint
    if not args.checkpoint:
        raise ValueError("a checkpoint folder is needed (config.json + model.safetensors)")
    return load_checkpoint(args.checkpoint)


def _measure_memory(pte_path):
    from exporters.memory_plan import measure_memory
    return measure_memory(pte_path)


def _cmd_info(args: argparse.Namespace) -> int:
    from runtime.cli.info import is_artifact, main as info_main

    from infini_export.checkpoint import load_checkpoint

    if is_artifact(args.path):  # the artifact half is the runtime's (infini-run info)
        return info_main(args, _measure_memory)

    model = load_checkpoint(args.path)
    cfg = model.cfg
    per_layer = 4 * cfg.state_numbers_per_layer()
    info = {"config": cfg.to_dict(), "parameters": model.num_parameters(), "state_bytes_per_layer": per_layer,
            "state_bytes_total": cfg.state_bytes(1),
            "state_numbers_total": cfg.n_layers * cfg.state_numbers_per_layer()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint: {args.path}")
    for key, value in cfg.to_dict().items():
        print(f"  {key:<15} {value}")
    print(f"parameters:      {info['parameters']:,}")
    print(f"state per layer: {per_layer:,} bytes (H*dk*(dv+1) = {cfg.state_numbers_per_layer():,} float32)")
    print(f"state in total:  {info['state_bytes_total']:,} bytes for batch 1, whatever the input length")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from exporters.options import ExportOptions
    from exporters.pipeline import ExportParityError, export_artifact
    from exporters.tokenizer import cli_tokenizer

    options = ExportOptions(args.format, quantize=args.quantize, block_size=args.block_size, delegate=args.delegate,
                            max_batch=args.max_batch, attention_rows=args.attention_rows,
                            full_logits=True if args.full_logits else None, jobs=args.jobs,
                            parity_segments=args.parity_segments, ops=args.ops)  # checked before the model loads
    module = _load_module(args)
    tokenizer = cli_tokenizer(args, module.step_spec().vocab_size)  # checked before anything is written
    try:
        manifest, report = export_artifact(module, args.output, args.format, options=options, tokenizer=tokenizer)
    except ExportParityError as exc:
        print(f"export wrote {args.output} but its parity check FAILED; the manifest records the failure: {exc}",
              file=sys.stderr)
        return 1
    files = ", ".join(f"{v.path} ({v.bytes:,} B)" for v in manifest.files.values())
    precision = f" {args.quantize}" if args.quantize else ""
    checked = f"parity passed over {args.parity_segments} segments" if report is not None else "no parity run"
    print(f"exported {args.format}{precision} to {args.output}: {files}; {checked}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import numpy as np

    from runtime.session import InfiniSession

    from infini_export.parity import validate

    module = _load_module(args)
    session = InfiniSession.open(args.artifact, backend=args.backend)
    tokens = None
    if args.tokens:
        tokens = np.frombuffer(Path(args.tokens).read_bytes(), dtype=np.uint8).astype(np.int64)
    precision = session.manifest.quantization or session.manifest.weights_dtype
    report = validate(session.backend, module, precision=precision, segments=args.segments, batch=args.batch,
                      seed=args.seed, tokens=tokens, manifest=session.manifest,
                      decode_segments=args.decode_segments, decode_chunk=args.decode_chunk)
    print(report.table(rows=args.rows))
    if args.report:
        report.write(args.report)
        print(f"report written to {args.report}")
    return 0 if report.passed else 1


def _cmd_average(args: argparse.Namespace) -> int:
    import hashlib

    from infini_export.checkpoint import SOUP_FILE, WEIGHTS_FILE, average_checkpoints, save_checkpoint
    from runtime.atomic import atomic_write

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    model = average_checkpoints(args.checkpoints, weights)
    save_checkpoint(model, args.output)
    sources = [{"checkpoint": str(d), "weight": w,
                "sha256": hashlib.sha256((Path(d) / WEIGHTS_FILE).read_bytes()).hexdigest()}
               for d, w in zip(args.checkpoints, weights or [1.0] * len(args.checkpoints))]
    text = json.dumps({"averaged": sources}, indent=1) + "\n"
    atomic_write(Path(args.output) / SOUP_FILE, lambda f: f.write(text.encode()))
    print(f"averaged {len(sources)} checkpoints into {args.output} (sources and their sha256 in {SOUP_FILE})")
    return 0


def _cmd_passkey(args: argparse.Namespace) -> int:
    from tasks.passkey_eval import main as passkey_main
    return passkey_main(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    return demo_main(args)


def _add_source(p: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        p.add_argument("checkpoint", nargs="?", help="checkpoint folder (config.json + model.safetensors)")
    else:
        p.add_argument("--checkpoint", help="the eager model's checkpoint folder")
    p.add_argument("--from", dest="source", choices=["infini-export", "lucidrains"], default="infini-export",
                   help="where the model comes from (default: an infini-export checkpoint)")
    p.add_argument("--weights", help="--from lucidrains: the model's state_dict (.pt)")
    p.add_argument("--kwargs", help="--from lucidrains: JSON of the InfiniTransformer constructor arguments")
    p.add_argument("--segment-len", type=int, help="--from lucidrains: the segment length it was trained with")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infini-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    add_commands(sub, info_help="a checkpoint's config, parameters and state size; or an artifact's files, weights, "
                                "state and (ExecuTorch) planned memory per method",
                 info_path_help="checkpoint folder (config.json + model.safetensors) or artifact folder (manifest.json)",
                 info_func=_cmd_info)  # info, run, generate: the runtime's (infini-run), one definition

    p = sub.add_parser("average", help="average checkpoints of one config parameter by parameter (a model soup)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (config.json + model.safetensors), 2 or more")
    p.add_argument("-o", "--output", required=True, help="folder for the averaged checkpoint")
    p.add_argument("--weights", help="comma-separated weight per checkpoint (default: uniform)")
    p.set_defaults(func=_cmd_average)

    p = sub.add_parser("export", help="export the segment step to ONNX or ExecuTorch, then check parity")
    _add_source(p, positional=True)
    p.add_argument("--format", choices=["onnx", "executorch"], default="onnx")
    p.add_argument("-o", "--output", required=True, help="artifact folder to write")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="int8 or int4 weights of the linear layers (state and memory stay float32)")
    p.add_argument("--block-size", type=int, default=None,
                   help="--quantize int4: weights per quantization block (group) along in_features; every "
                        "linear's in_features must be a multiple of it (default 32)")
    p.add_argument("--attention-rows", type=int, default=None,
                   help="ONNX: the segment programs' local attention in blocks of this many query rows, for "
                        "segments longer than that (default 256; 0: one block of T x T scores)")
    p.add_argument("--ops", choices=["onnxruntime", "portable"], default=None,
                   help="ONNX: 'onnxruntime' (default) uses its contrib ops where they apply (GroupQueryAttention in "
                        "the decode program, MatMulNBits for int4); 'portable' keeps to standard ONNX ops")
    p.add_argument("--delegate", choices=["xnnpack", "none"], default="xnnpack", help="ExecuTorch delegate")
    p.add_argument("--full-logits", action="store_true",
                   help="ExecuTorch: also export the 'forward' method, a whole segment's logits in one call (memory "
                        "planned for batch x segment_len x vocab logits). Without it a batch-1 program has the "
                        "last-token and decode methods, and all logits come from decode calls")
    p.add_argument("--jobs", type=int, default=None,
                   help="ExecuTorch: processes that lower the program's methods side by side, each with a share of "
                        "the memory (default: one per method, up to the cores available; 1: one process)")
    p.add_argument("--tokenizer", metavar="TOKENIZER_JSON",
                   help="a Hugging Face tokenizer.json to ship in the artifact (default: the checkpoint folder's "
                        "tokenizer.json, if any); refused unless the model's vocab_size >= its largest id + 1")
    p.add_argument("--bos-token", metavar="TOKEN", help="the token the runtime prepends to a prompt, or 'none' "
                                                        "(default: <bos>, <s>, ... among the special tokens, "
                                                        "prepended where the tokenizer itself prepends it)")
    p.add_argument("--eos-token", metavar="TOKEN", action="append",
                   help="a token that ends generation (repeatable; 'none': no such token; default: every one of "
                        "<eos>, </s>, <|endoftext|>, ... among the special tokens)")
    p.add_argument("--parity-segments", type=int, default=64, help="segments compared after export")
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest batch the artifact accepts (default: 64 for ONNX, a dynamic axis; 1 for "
                        "ExecuTorch, whose memory is planned for this bound)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("validate", help="parity of an artifact against the eager model over K segments")
    p.add_argument("artifact", help="artifact folder (manifest.json + model file)")
    _add_source(p, positional=False)
    p.add_argument("--segments", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens", help="a file whose bytes are the token ids (default: random tokens)")
    p.add_argument("--backend", choices=["onnxruntime", "executorch"], default=None)
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--rows", type=int, default=10, help="segments shown in the table")
    p.add_argument("--decode-segments", type=int, default=3,
                   help="segment boundaries the decode program is driven across (0: skip)")
    p.add_argument("--decode-chunk", type=int, default=1, help="tokens per decode call in that check")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("passkey", help="passkey retrieval accuracy at long lengths, with the memory-off control")
    p.add_argument("model", help="an artifact folder (manifest.json) or a checkpoint folder (eager torch)")
    p.add_argument("--lengths", default=None, help="comma-separated, K/M suffixes (default 4K,32K,128K,1M; with "
                   "--replay: keep only these lengths of the replayed prompts)")
    p.add_argument("--depths", default=None, help="needle depths in [0, 1] (default 0,0.5,1; with --replay: a filter)")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--replay", action="append", metavar="PASSKEY_JSON",
                   help="re-run the exact prompts (length, depth, key) of an earlier passkey.json instead of drawing "
                        "new ones (repeatable: cells are concatenated); --trials and --seed are then unused")
    p.add_argument("--misses-only", action="store_true",
                   help="with --replay: only the prompts that run answered wrongly (a fixed set of hard prompts)")
    p.add_argument("--backend", choices=["onnxruntime", "executorch"], default=None)
    p.add_argument("--no-control", action="store_true", help="skip the memory-disabled control")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default="out/passkey", help="folder for passkey.json and passkey.png")
    p.set_defaults(func=_cmd_passkey)

    p = sub.add_parser("demo", help="the main job: export the bundled model, validate, passkey up to 1M tokens")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled models/passkey-small)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--lengths", default="4K,32K,128K,1M")
    p.add_argument("--trials", type=int, default=2, help="prompts per (length, depth) cell (2: ~4 min on 2 idle cores)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os
    if os.environ.get("INFINI_EXPORT_NO_TORCH"):  # prove a command runs without torch (device-like process)
        sys.modules["torch"] = None
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in TORCH_COMMANDS:
        import torch  # noqa: F401  (torch sets its loggers' levels when imported: silence after that)
    silence_third_party()
    return run_command("infini-export", args)


if __name__ == "__main__":
    sys.exit(main())

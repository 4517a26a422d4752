"""The options of ``info``, ``run`` and ``generate``: defined once, used by ``infini-run`` and ``infini-export``."""
from __future__ import annotations

import argparse

BACKENDS = ["onnxruntime", "executorch"]
INFO_HELP = "an artifact's files, weights, state and (ExecuTorch) planned memory per method"
RUN_HELP = "stream a text or random tokens through an artifact in constant memory"
GENERATE_HELP = "generate tokens after a prompt (decode program: one call per token)"
LOW_MEMORY_HELP = ("onnxruntime: allocate every activation when produced and free it after its last use (no arena, no "
                   "buffer reuse): a lower peak resident memory, slower segments")


def add_info_arguments(p: argparse.ArgumentParser, path_help: str = "artifact folder (manifest.json)") -> None:
    """``info PATH [--json]``."""
    p.add_argument("path", metavar="PATH", help=path_help)
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--low-memory", action="store_true", help=LOW_MEMORY_HELP)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """``run ART (--text FILE | --random-tokens N)`` with snapshots, resume and backend options."""
    p.add_argument("artifact")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a file, streamed as bytes (byte-level vocabularies)")
    src.add_argument("--random-tokens", type=int, help="stream N random tokens")
    _add_engine_arguments(p)
    p.add_argument("--chunk", type=int, default=None, help="tokens per feed call (default: 16 segments)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot", help="save the state here (atomically) every --snapshot-every segments")
    p.add_argument("--snapshot-every", type=int, default=0)
    p.add_argument("--resume", help="a state file from --snapshot: continue the stream from there")
    p.add_argument("--save-final", help="save the final state here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """``generate ART (--prompt TEXT | --prompt-file FILE | --random-prompt N) [-n K]`` and sampling options."""
    p.add_argument("artifact")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (encoded by the artifact's tokenizer, else as bytes for "
                                      "byte-level vocabularies)")
    src.add_argument("--prompt-file", help="a file whose text (or bytes) is the prompt")
    src.add_argument("--random-prompt", type=int, metavar="N", help="N random token ids (any vocabulary)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_engine_arguments(p)
    p.add_argument("--quiet", action="store_true", help="print only the speed line")

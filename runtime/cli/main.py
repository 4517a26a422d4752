"""``infini-run``: info, run and generate for an exported artifact, without torch (the runtime's command line)."""
from __future__ import annotations

import argparse
import sys

from . import args as cli_args


def _info(args) -> int:
    from .info import main
    return main(args)


def _run(args) -> int:
    from .run import run_stream
    return run_stream(args)


def _generate(args) -> int:
    from .generate import main
    return main(args)


def add_commands(sub, info_help: str = cli_args.INFO_HELP, info_path_help: str | None = None, info_func=_info
                 ) -> dict[str, argparse.ArgumentParser]:
    """Add ``info``, ``run`` and ``generate`` to a subparsers object; {name: parser}. ``infini-export`` passes its
    own ``info`` help and function (its ``info`` also reads checkpoint folders)."""
    parsers = {"info": sub.add_parser("info", help=info_help),
               "run": sub.add_parser("run", help=cli_args.RUN_HELP),
               "generate": sub.add_parser("generate", help=cli_args.GENERATE_HELP)}
    cli_args.add_info_arguments(parsers["info"], *([info_path_help] if info_path_help else []))
    cli_args.add_run_arguments(parsers["run"])
    cli_args.add_generate_arguments(parsers["generate"])
    for name, func in (("info", info_func), ("run", _run), ("generate", _generate)):
        parsers[name].set_defaults(func=func)
    return parsers


def build_parser() -> argparse.ArgumentParser:
    """The ``infini-run`` parser."""
    parser = argparse.ArgumentParser(prog="infini-run", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Call ``args.func``; a runtime error, a bad value or a missing file is one line on stderr and exit code 2."""
    from ..errors import InfiniRuntimeError
    try:
        return int(args.func(args) or 0)
    except (InfiniRuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infini-run``."""
    return run_command("infini-run", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

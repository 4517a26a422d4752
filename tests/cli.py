"""The command lines run in the test's process (no interpreter of its own to start): exit code, stdout, stderr."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> CliResult:
    """``infini-export ARGS`` as ``infini_cli.main.main`` runs it; a usage error (argparse's exit) is its code."""
    from infini_cli.main import main
    return run_main(main, args)


def run_training(*args) -> CliResult:
    """``scripts/train_passkey.py ARGS`` as its library (``training.commands.passkey_main``) runs it."""
    from training.commands import passkey_main
    return run_main(lambda argv: passkey_main("train_passkey.py", argv), args)


def run_main(main, args) -> CliResult:
    """``main(list of str)`` with its output captured and its exit turned into a code, as a process would end."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # as the interpreter ends: an int is the code, anything else is printed, code 1
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=err)
    return CliResult(code, out.getvalue(), err.getvalue())

"""The `rismvdr` command line.

Commands: `simulate`, `localize`, `evaluate`, `plot scene|snr`, `methods`, `demo`, `design codes`,
`bench accuracy|speed|latency`, `train`, `train-refiner`, `hpo run|two-stage|export|trials` and
`export-model`. Each lives in its own module here (`rismvdr.cli.<command>`, `common` for the
flags they share) with its `add_parser(subparsers)` and its `run(args)`; `build_parser`
assembles them and `main` runs one.

Every command has `--help`; units are in flag names (`*_deg`, `*_m`, `*_db`, `*_s`). Files follow
the Conventions page (section 8) and are written atomically. A malformed input gives a one-line error naming
the flag, key or file and exit status 2. `--set KEY=VALUE` follows one grammar everywhere
(`rismvdr.overrides`).

Start-up: the parser is built without JAX (the modules here import the library inside `run`;
defaults come from `rismvdr.defaults`, and the few names and defaults the library states in
modules that load JAX are mirrored beside their flags, each checked against the library by
tests/test_cli.py), so `--help`, a malformed flag (type, choice, finiteness, range) and an
unusable output path are answered before JAX loads; each command's `check(args)` holds the
flag checks that need no library. `--set` values are checked against their config, which loads
the library, but before any file is read or any work is done.

Compiled programs are kept in a per-user persistent cache (`rismvdr.io.compile_cache_dir`:
`$RISMVDR_CACHE_DIR`, else `$XDG_CACHE_HOME/rismvdr/jax`, else `~/.cache/rismvdr/jax`), with
the package's traced programs beside them (`rismvdr.programs`), so a command run again on the
same shapes neither traces nor compiles again; `--no-compile-cache` or `RISMVDR_COMPILE_CACHE=0`
turns both off.

Renamed commands (the old spellings still work for one release and print a one-line note on
stderr): `rismvdr hpo` with flags and no subcommand is `rismvdr hpo run`, `rismvdr hpo2` is
`rismvdr hpo two-stage`, `rismvdr export` is `rismvdr export-model`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import metadata
from typing import NoReturn

from rismvdr.cli import bench, demo, design, evaluate, export, hpo, localize, methods, plot, simulate, train
from rismvdr.cli.common import (
    CACHE_DIR_ENV,
    COMPILE_CACHE_ENV,
    check_finite_flags,
    check_outputs,
    one_line,
)

__all__ = ["main", "build_parser", "OneLineErrorParser", "COMMANDS", "RENAMED"]

#: The command modules, in the order `rismvdr --help` lists them.
COMMANDS = (simulate, localize, evaluate, plot, demo, design, bench, train, hpo, export, methods)

#: Old command words -> their new spelling; accepted for one release with a note on stderr.
RENAMED = {"hpo2": ("hpo", "two-stage"), "export": ("export-model",)}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose refusals (an unknown flag, a value of the wrong type, a choice
    not offered) are one line on stderr with exit status 2, like every other bad input; its
    subparsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The `rismvdr` parser: global flags and one subparser per command (no JAX is loaded)."""
    p = OneLineErrorParser(
        prog="rismvdr",
        description="Near-field multi-source localization (azimuth, elevation, range; number of sources unknown) "
                    "through a reconfigurable intelligent surface or a planar array.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--no-compile-cache", action="store_true", help="do not keep compiled (and traced) programs in the "
                   f"per-user cache (${COMPILE_CACHE_ENV}=0 does the same; ${CACHE_DIR_ENV} moves it; default "
                   "$XDG_CACHE_HOME/rismvdr/jax, else ~/.cache/rismvdr/jax)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def renamed(argv: list[str]) -> tuple[list[str], str | None]:
    """`argv` with an old command spelling replaced by its new one, and the one-line note to
    print (None when nothing was renamed)."""
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if at is None:
        return argv, None
    word, rest = argv[at], argv[at + 1:]
    if word in RENAMED:
        old, new = f"`rismvdr {word}`", RENAMED[word]
    elif word == "hpo" and rest and rest[0] not in hpo.SUBCOMMANDS and rest[0] not in ("-h", "--help"):
        old, new = "`rismvdr hpo` without a subcommand", ("hpo", "run")  # the old single-study form
    else:
        return argv, None
    note = (f"WARNING rismvdr: {old} is deprecated and will be removed in the next release; "
            f"use `rismvdr {' '.join(new)}`")
    return argv[:at] + list(new) + rest, note


def quiet_cache_loader_logs() -> None:
    """With jaxlib older than 0.10 (what Python 3.11 gets: 0.10.x is excluded), silence XLA's C++
    log unless the user set its level: that jaxlib's CPU loader writes two error lines for every
    program it reads back from the compilation cache, naming two tuning attributes
    (`prefer-no-gather`, `prefer-no-scatter`) it does not recognise on the very machine that
    compiled them; the programs load and run correctly. Errors still reach the user as Python
    exceptions."""
    try:
        version = tuple(int(v) for v in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return
    if version < (0, 10):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0, 2 for bad input, 128 + signal when stopped)."""
    quiet_cache_loader_logs()  # before anything loads JAX
    argv, note = renamed(list(sys.argv[1:] if argv is None else argv))
    if note:
        print(note, file=sys.stderr)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    command = sys.modules[args.handler]
    try:  # what the flags alone decide, before JAX loads
        check_finite_flags(args)
        check_outputs(args)
        if hasattr(command, "check"):
            command.check(args)
    except ValueError as e:
        print(f"rismvdr {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    from rismvdr.io import enable_default_compile_cache, sigterm_raises  # deferred: loads JAX

    if not args.no_compile_cache:
        enable_default_compile_cache()
    try:
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: no temporary file is left behind
            return command.run(args)
    except (ValueError, OSError, EOFError) as e:  # bad input or an unwritable output: one line, status 2
        print(f"rismvdr {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)
        print("terminated" if signum != 2 else "interrupted", file=sys.stderr)
        return 128 + signum

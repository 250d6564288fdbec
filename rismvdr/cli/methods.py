"""`rismvdr methods`: list the registered localization methods."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    m = sub.add_parser("methods", help="list the registered localization methods",
                       description="One line per method of the registry: name, description and what it needs.")
    m.set_defaults(handler=__name__)


def run(args: argparse.Namespace) -> int:
    from rismvdr.localize.registry import METHODS  # deferred: loads JAX

    for m in METHODS.values():
        flags = [t for t, on in (("needs truth", m.needs_truth), ("full-array only", m.full_array_only),
                                 ("RIS only", m.ris_only), ("learned: --checkpoint or shipped weights", m.learned))
                 if on]
        print(f"{m.name:16s} {m.description}" + (f" [{', '.join(flags)}]" if flags else ""))
    return 0

"""Copy generated markdown files into README.md between include markers.

    <!-- include: docs/bench/accuracy_summary.md -->
    ...the file's content, replaced by this script...
    <!-- end include -->

    python benchmarks/include.py            # rewrite README.md's include blocks
    python benchmarks/include.py --check    # exit 1 if a block differs from its file

`tests/test_readme.py` runs the check, so a table in the README cannot drift from the bench
report it was copied from.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def render(text: str, root: Path = ROOT) -> str:
    """`text` with every include block's body replaced by its file's content."""
    def sub(m):
        body = (root / m.group("path")).read_text()
        return m.group(1) + body.rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(sub, text)


def stale_blocks(readme: Path = ROOT / "README.md", root: Path = ROOT) -> list[str]:
    """Paths of the include blocks whose body differs from their file."""
    out = []
    for m in BLOCK.finditer(readme.read_text()):
        want = (root / m.group("path")).read_text().rstrip("\n") + "\n"
        if m.group("body") != want:
            out.append(m.group("path"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"), help="file with include markers")
    ap.add_argument("--check", action="store_true", help="only report blocks that differ (exit status 1)")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    if args.check:
        stale = stale_blocks(readme)
        for path in stale:
            print(f"{readme}: the block of {path} differs from the file; run python benchmarks/include.py")
        return 1 if stale else 0
    text = readme.read_text()
    new = render(text)
    if new != text:
        readme.write_text(new)
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

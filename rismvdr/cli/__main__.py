"""`python -m rismvdr.cli`: the `rismvdr` command."""
import sys

from rismvdr.cli import main

if __name__ == "__main__":
    sys.exit(main())

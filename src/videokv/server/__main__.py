"""`python -m videokv.server ARGS` is `videokv serve ARGS`."""

from __future__ import annotations

import sys

from videokv.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))

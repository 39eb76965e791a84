"""``labelshare-bench NAME [ARGUMENTS]``: run one experiment of :mod:`labelshare_benchmarks`."""

from __future__ import annotations

import importlib
import sys

from . import EXPERIMENTS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in EXPERIMENTS:
        print(__doc__ + "\n\nexperiments: " + ", ".join(EXPERIMENTS), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f".{EXPERIMENTS[argv[0]]}", __package__)
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())

"""The `graphc` command."""
from __future__ import annotations

import argparse
import sys

import graphc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphc", description=graphc.__doc__)
    parser.add_argument("--version", action="version", version=f"graphc {graphc.__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m notebench.serving`: run the prediction service (what `notebench serve` calls)."""

from __future__ import annotations

import argparse

from notebench.serving.commands import add_serve_arguments
from notebench.serving.server import serve


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m notebench.serving", description="Notebench prediction service")
    add_serve_arguments(parser)
    serve(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()

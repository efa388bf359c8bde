"""The ``napari-mitosis`` command line (thin: parse, call the pipeline, report).

Each group of sub-commands lives in its own module with a ``register(sub)``
function; bad input ends with a one-line message and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import NapariMitosisError
from . import classify, detect, heatmap, nuclei, nucleus_types, slides, stain, train

#: Modules that add sub-commands, in help order; ``train`` comes last (it
#: collects the trainers the others add).
COMMAND_MODULES = [slides, stain, nuclei, classify, nucleus_types, heatmap, detect, train]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-mitosis", description="H&E whole-slide mitosis review, headless.")
    p.add_argument("--version", action="version", version=f"napari-mitosis {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def error(msg: str) -> int:
    print(f"napari-mitosis: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return error("interrupted")
    except Exception as exc:
        if isinstance(exc, NapariMitosisError):
            return error(str(exc))  # our own errors: the message says what is wrong and what to do
        if isinstance(exc, (OSError, ValueError)):
            return error(f"{type(exc).__name__}: {exc}")
        raise

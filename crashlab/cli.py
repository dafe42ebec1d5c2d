"""The `crashlab` command: one argparse tree; each stage registers its own subcommands.

A stage's CLI module exposes `register(subparsers)`, adding parsers whose `func(args) -> int` is
the exit code. Modules are listed here in data-flow order.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crashlab import __version__

COMMAND_MODULES = (
    "crashlab.ingest.cli",  # ingest, catalog
    "crashlab.ingest.fetch.cli",  # fetch, record
    "crashlab.replay.cli",  # replay
    "crashlab.replay.sim.cli",  # simulate, calibrate
    "crashlab.analysis.cli",  # sql, timeline
    "crashlab.analysis.report_cli",  # attribute, report
    "crashlab.demo",  # demo
)

EPILOG = """\
examples:
  crashlab demo                                   # simulate the crash offline, replay, attribute, report
  crashlab ingest ../shared/data/real             # real archives into data/lake/
  crashlab catalog                                # what the lake holds
  crashlab sql --query lows --param start=2025-10-10T20:00 --param end=2025-10-10T23:00
  crashlab timeline --start 2025-10-10T20:45 --end 2025-10-10T21:45
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crashlab",
        description="Forensic replay toolkit for crypto market crashes (first: 10-11 October 2025).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"crashlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built yet in this checkout
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

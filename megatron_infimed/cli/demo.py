"""``infimed-demo``: the whole pipeline on the CPU with the tiny preset (see demo/run.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_infimed.demo.run import DemoSettings, run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infimed-demo", description=__doc__)
    parser.add_argument("--workdir", default="runs/demo", help="where data, checkpoints and the report go")
    parser.add_argument("--fast", action="store_true", help="a few iterations per stage: checks the plumbing only")
    args = parser.parse_args(argv)
    run_demo(Path(args.workdir), DemoSettings.fast() if args.fast else DemoSettings())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``infimed-train``: parse the run configuration and train (or ``--dry-run``: build and report)."""

from __future__ import annotations

import json
import sys

from megatron_infimed.training.config import load_config


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"infimed-train: error: {error}", file=sys.stderr)
        return 2
    if config.dry_run:
        from megatron_infimed.training.dry_run import dry_run_report

        print(json.dumps(dry_run_report(config)))
        return 0
    from megatron_infimed.training.loop import train

    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

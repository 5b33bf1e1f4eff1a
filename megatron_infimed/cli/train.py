"""``infimed-train``: parse the run configuration and train (or ``--dry-run``: build and report).

Exit codes: 0 the run finished (or stopped at ``--exit-duration-in-mins``); 2 a configuration,
data or checkpoint error, told in one line (``--debug`` shows the traceback); 128 + N a stop on
signal N (after a save, where one could be made), e.g. 143 for SIGTERM, 138 for SIGUSR1.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback

from megatron_infimed.config.flags import load_config

# Errors a user can act on from one line: a bad option, a missing or corrupted file, data that
# yields nothing, a run that diverged. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, pickle.UnpicklingError, FloatingPointError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from megatron_infimed.data.dry_spell import NoUsableSamples

    return (*_USER_ERRORS, NoUsableSamples)


def _say(message: str) -> None:
    # Collective errors reach every rank alike: rank 0 tells the user, the others stay quiet.
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        config, mode = load_config(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"infimed-train: error: {error}", file=sys.stderr)
        return 2
    if mode.dry_run:
        from megatron_infimed.training.dry_run import dry_run_report

        try:
            report = dry_run_report(config, mode.device, mode.world_size, mode.gpu_memory_gb)
        except ValueError as error:  # a layout the planner cannot place, e.g. --world-size 6 with TP 4
            print(f"infimed-train: error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(report))
        return 0
    from megatron_infimed.training.loop import train
    from megatron_infimed.training.signals import StoppedBySignal

    try:
        train(config)
    except StoppedBySignal as stop:
        _say(f"infimed-train: {stop}")
        return stop.exit_code
    except KeyboardInterrupt:
        _say("infimed-train: interrupted (second SIGINT): stopped without saving")
        return 130
    except _user_errors() as error:
        if config.logging.debug:
            traceback.print_exc()
        print(f"infimed-train: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

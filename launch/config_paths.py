"""Rebase a training config's placeholder paths; print the flags that carry the new values.

The example configs name their inputs in a placeholder layout (``data/prepared/medical``,
``checkpoints/infimed-4b/hf-init``). A cluster keeps them elsewhere, so launch/node.sh maps each
prefix onto its root (DATA_ROOT, CKPT_ROOT) and passes the results as flags, which override the
YAML. Only inputs are rebased (``data.paths``, ``tokenizer``, ``pretrained_checkpoint``): the
launcher sets the outputs (``--save``, ``--load``, ``--run-dir``) itself.

    config_paths.py stage3.yaml --rebase data/prepared=/lustre/med/prepared
    --data
    {"paths": ["/lustre/med/prepared/medical", ...], "weights": [0.5, 0.3, 0.2], ...}

One flag or value per line; a key whose value does not change prints nothing. A prefix matches
whole path components only: ``data/prepared`` rebases ``data/prepared/x`` but not
``data/prepared2/x``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def rebase(path: str, prefixes: list[tuple[str, str]]) -> str:
    """``data/prepared/medical`` with ``(data/prepared, /lustre/p)`` → ``/lustre/p/medical``."""
    for old, new in prefixes:
        if path == old or path.startswith(old.rstrip("/") + "/"):
            return new.rstrip("/") + path[len(old.rstrip("/")):]
    return path


def rebased_flags(config: dict, prefixes: list[tuple[str, str]]) -> list[str]:
    flags: list[str] = []
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("paths"), list):
        paths = [rebase(str(p), prefixes) for p in data["paths"]]
        if paths != data["paths"]:
            flags += ["--data", json.dumps({**data, "paths": paths})]
    for key in ("tokenizer", "pretrained_checkpoint"):
        value = config.get(key) or config.get(key.replace("_", "-"))
        if isinstance(value, str) and rebase(value, prefixes) != value:
            flags += ["--" + key.replace("_", "-"), rebase(value, prefixes)]
    return flags


def _prefix(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"--rebase '{text}' must be OLD=NEW, e.g. data/prepared=/lustre/prepared")
    return old, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="training YAML")
    parser.add_argument("--rebase", type=_prefix, action="append", default=[], metavar="OLD=NEW")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"config_paths.py: config file not found: {args.config}", file=sys.stderr)
        return 2
    config = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(config, dict):
        print(f"config_paths.py: {args.config} must hold a mapping of options", file=sys.stderr)
        return 2
    for line in rebased_flags(config, args.rebase):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

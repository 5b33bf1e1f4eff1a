"""``RunConfig`` from YAML and Megatron-LM-style flags: defaults < YAML < flags.

A YAML file nests options by section or uses the flat names, in any mix::

    parallel: {tensor_model_parallel_size: 2}      # nested
    seq_length: 4096                               # flat (batch.seq_length)
    data: {paths: ["${DATA_ROOT}/medical"], num_workers: 4}

Flags are the flat names with dashes (``--seq-length 4096``, ``--data-path A B``); a whole section
can also be given as JSON (``--data '{"paths": [...], "num_workers": 4}'``). Strings in YAML may
name environment variables, ``${VAR}`` or ``${VAR:-default}``; an unset variable without a
default is an error naming it. Every key and value is checked here: an unknown key, a value of
the wrong type or a choice not offered fails before anything starts, naming the key.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from megatron_infimed.config.run import FLAT_NAMES, SECTIONS, RunConfig

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def flat_name(section: str, name: str) -> str:
    return FLAT_NAMES.get((section, name), name)


@functools.cache
def _options() -> dict[str, tuple[str, str]]:
    """flat name → (section, field name), for every field of every section."""
    options = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            flat = flat_name(section, f.name)
            if flat in options or flat in SECTIONS:
                raise RuntimeError(f"flat option name '{flat}' is defined twice")  # a bug in run.py
            options[flat] = (section, f.name)
    return options


@functools.cache
def _docstrings(cls: type) -> dict[str, str]:
    """The string literal under each field of ``cls``: its help text."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _parts(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        # A union built at run time from a tuple of any length, not an annotation: ``X | Y`` cannot spell it.
        rest = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
        return rest, len(args) < len(typing.get_args(hint))
    return hint, False


def _coerce(section: str, name: str, value: Any, where: str) -> Any:
    """``value`` as field ``section.name`` holds it, or a ValueError naming the key."""
    cls = SECTIONS[section]
    kind, optional = _parts(_hint(cls, name))
    key = flat_name(section, name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"'{key}' in {where} may not be empty")
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ValueError(f"'{key}' in {where} is {value!r}; expected one of {list(choices)}")
        return value
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"'{key}' in {where} must be a list, got {value!r}")
        return tuple(_scalar(key, item, v, where) for v in value)
    return _scalar(key, kind, value, where)


def _scalar(key: str, kind: type, value: Any, where: str) -> Any:
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if kind is int and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    if isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool)):
        return value
    raise ValueError(f"'{key}' in {where} is {value!r} ({type(value).__name__}); expected {kind.__name__}")


def expand_variables(value: Any, where: str) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in every string of a YAML value."""
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ValueError(f"{where} refers to ${{{name}}}, which is not set (set it, or write "
                             f"${{{name}:-default}})")
        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [expand_variables(v, where) for v in value]
    if isinstance(value, dict):
        return {k: expand_variables(v, where) for k, v in value.items()}
    return value


def _section_values(section: str, values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"section '{section}' in {where} must be a mapping of its options, got {values!r}")
    known = {f.name for f in fields(SECTIONS[section])}
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"unknown key '{key}' in section '{section}' of {where}; known: {sorted(known)}")
        out[name] = _coerce(section, name, value, where)
    return out


def _sorted_values(values: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """YAML or flag values (nested or flat) → {section: {field: value}}."""
    out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in SECTIONS:
            out[name].update(_section_values(name, value, where))
        elif name in _options():
            section, field_name = _options()[name]
            out[section][field_name] = _coerce(section, field_name, value, where)
        else:
            raise ValueError(f"unknown key '{key}' in {where}; see infimed-train --help for the known options")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infimed-train", description="Train an InfiMed model on megatron-core.",
        epilog="A YAML --config nests these options by section or uses the flat names; flags win over it.")
    parser.add_argument("--config", help="YAML file with any of the options below")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model on the meta device and print its sizes and the settings that "
                             "decide what runs (the 'effective' object) as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="with --dry-run: show the choices made for this kind of device (default: this "
                             "machine's); needs neither CUDA nor Transformer Engine")
    parser.add_argument("--world-size", type=int, default=None,
                        help="with --dry-run: plan the memory of a run on this many GPUs (data-parallel size = "
                             "world size / (TP × PP × CP); default: TP × PP × CP, one replica)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="with --dry-run: memory of one GPU in GB (1e9 bytes) that the plan must fit "
                             f"(default: {Mode.gpu_memory_gb:g})")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section}", f"(YAML section '{section}', or its flat names; "
                                                        f"--{section} JSON sets several at once)")
        group.add_argument(f"--{section}", type=json.loads, default=None, metavar="JSON",
                           help=argparse.SUPPRESS)
        docs = _docstrings(cls)
        for f in fields(cls):
            _add_flag(group, section, f, docs.get(f.name, ""))
    return parser


def _add_flag(group, section: str, f, doc: str) -> None:
    flag = "--" + flat_name(section, f.name).replace("_", "-")
    kind, _ = _parts(_hint(SECTIONS[section], f.name))
    default = f.default if f.default is not MISSING else f.default_factory()
    text = f"{doc} (default: {default!r})" if doc else None
    if kind is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif kind is dict:
        group.add_argument(flag, type=json.loads, default=None, metavar="JSON", help=text)
    elif typing.get_origin(kind) is tuple:
        group.add_argument(flag, nargs="+", default=None, help=text)
    elif typing.get_origin(kind) is typing.Literal:
        group.add_argument(flag, choices=typing.get_args(kind), default=None, help=text)
    else:
        group.add_argument(flag, default=None, help=text)  # typed by _coerce, with the key in the message


@dataclass(frozen=True)
class Mode:
    """What the command line asks besides the run's options: a dry run, for which device, and the
    cluster its memory plan is for."""

    dry_run: bool = False
    device: str | None = None
    world_size: int | None = None
    gpu_memory_gb: float = 80.0


def load_config(argv: list[str] | None = None) -> tuple[RunConfig, Mode]:
    """(the run configuration, the mode): defaults, then ``--config``, then flags."""
    args = vars(build_parser().parse_args(argv))
    dry_run_only = {name: args.pop(name) for name in ("device", "world_size", "gpu_memory_gb")}
    mode = Mode(args.pop("dry_run"), **{k: v for k, v in dry_run_only.items() if v is not None})
    for name, value in dry_run_only.items():
        if value is not None and not mode.dry_run:
            raise ValueError(f"--{name.replace('_', '-')} only applies to --dry-run (a run uses the machine's "
                             f"own devices)")
    if mode.world_size is not None and mode.world_size < 1:
        raise ValueError(f"--world-size is {mode.world_size}; it must be at least 1")
    if not mode.gpu_memory_gb > 0:
        raise ValueError(f"--gpu-memory-gb is {mode.gpu_memory_gb}; it must be a positive number of GB")
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    path = args.pop("config")
    if path:
        for section, options in _sorted_values(_read_yaml(Path(path)), str(path)).items():
            values[section].update(options)
    # Whole-section JSON flags first, then single flags, so --seq-length wins over --batch '{...}'.
    flags = {k: v for k, v in args.items() if v is not None}
    ordered = {k: flags[k] for k in sorted(flags, key=lambda k: k not in SECTIONS)}
    for section, options in _sorted_values(ordered, "the command line").items():
        values[section].update(options)
    config = RunConfig(**{section: SECTIONS[section](**options) for section, options in values.items()})
    if not mode.dry_run:
        config.check_data()
    return config, mode


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a mapping of options, not {type(loaded).__name__}")
    return expand_variables(loaded, str(path))


def with_options(config: RunConfig, **flat: Any) -> RunConfig:
    """A copy of ``config`` with options changed by flat name (tests, benchmarks, the demo)."""
    changed: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = _options()[key]
        changed.setdefault(section, {})[name] = value
    return replace(config, **{s: replace(getattr(config, s), **v) for s, v in changed.items()})

"""The run configuration: one frozen dataclass, filled from YAML and then from flags.

Flag names follow Megatron-LM (``--tensor-model-parallel-size``, ``--lr-warmup-iters``, ...); a
YAML key is the same name with dashes or underscores. Precedence: defaults < YAML < flags.
Unknown keys and flags are errors that name the key.

``model`` holds dotted overrides of the preset (``{"reduction.kind": "none"}``); ``data`` holds
the loader's settings (blend of shard folders and weights, see ``data.loader.DataConfig``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # Model
    preset: str = "tiny"
    model: dict = field(default_factory=dict)
    transformer_impl: str = "local"
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_language: bool = False
    # Parallelism
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    context_parallel_size: int = 1
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int | None = None
    # Batches
    micro_batch_size: int = 1
    global_batch_size: int | None = None
    seq_length: int = 1024
    # Optimisation
    lr: float = 1e-4
    min_lr: float = 0.0
    lr_warmup_iters: int = 0
    lr_decay_style: str = "cosine"
    lr_decay_iters: int | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    train_iters: int = 10
    bf16: bool = False
    fp8: str | None = None
    # Shard optimizer state over data-parallel ranks (megatron-core's DistributedOptimizer).
    use_distributed_optimizer: bool = False
    seed: int = 1234
    # Stop with an error naming the iteration when the loss or a gradient is NaN/inf (Megatron's
    # --check-for-nan-in-loss-and-grad), before the optimizer applies it.
    check_for_nan_in_loss_and_grad: bool = True
    # Data
    mock_data: bool = False
    data: dict = field(default_factory=dict)
    tokenizer: str | None = None
    loss_weighting: str = "token"
    no_packing: bool = False
    # Resume with another data-parallel size: restart the data streams instead of refusing.
    reset_data_state: bool = False
    # Checkpoints
    save: str | None = None
    load: str | None = None
    pretrained_checkpoint: str | None = None
    save_interval: int | None = None
    keep_last: int = 2
    async_save: bool = False
    exit_duration_in_mins: float | None = None
    # Check every file of a checkpoint against its checksums.sha256 before loading it.
    verify_checkpoint: bool = True
    # Logging
    run_dir: str | None = None
    log_interval: int = 1
    wandb_project: str | None = None
    wandb_mode: str = "offline"
    dry_run: bool = False
    # Show the full traceback of a configuration or data error instead of one line.
    debug: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HELP = {
    "preset": "model preset (tiny, infimed-1.7b, infimed-4b)",
    "model": "JSON object of dotted preset overrides, e.g. '{\"reduction.kind\": \"none\"}'",
    "mock_data": "train on deterministic synthetic packed multimodal batches",
    "dry_run": "build the model on the meta device and print its sizes as JSON",
    "loss_weighting": "token | sample | square",
    "fp8": "FP8 recipe through Transformer Engine (e.g. hybrid); needs --transformer-impl te",
    "check_for_nan_in_loss_and_grad": "stop with an error when the loss or a gradient is NaN/inf (default on)",
    "verify_checkpoint": "check checkpoint files against their SHA-256 manifest before loading (default on)",
    "load": "checkpoint folder to resume from (holds latest_checkpointed_iteration.txt); missing or empty "
            "starts a new run",
    "debug": "show full tracebacks for configuration and data errors",
}


def _base_type(annotation: Any) -> type:
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infimed-train", description="Train an InfiMed model on megatron-core.")
    parser.add_argument("--config", help="YAML file with any of the options below (dash or underscore keys)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.type)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_HELP.get(f.name))
        elif kind is dict:
            parser.add_argument(flag, type=json.loads, default=None, help=_HELP.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=None, help=_HELP.get(f.name))
    return parser


def _coerce(name: str, value: Any, where: str) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: convert to the field's type or name the key."""
    kind = _base_type({f.name: f.type for f in fields(TrainConfig)}[name])
    if value is None or isinstance(value, kind):
        return value
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"'{name}' in {where} is {value!r} ({type(value).__name__}); expected {kind.__name__}")


def _normalise_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"unknown key '{key}' in {where}; see infimed-train --help for the known options")
        out[name] = _coerce(name, value, where)
    return out


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then the ``--config`` YAML, then explicit flags."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of options, not {type(loaded).__name__}")
        values.update(_normalise_keys(loaded, str(path)))
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    values.update(flags)
    return validate(TrainConfig(**values))


def validate(config: TrainConfig) -> TrainConfig:
    if config.loss_weighting not in ("token", "sample", "square"):
        raise ValueError(f"loss_weighting '{config.loss_weighting}' must be token, sample or square")
    if config.transformer_impl not in ("local", "te"):
        raise ValueError(f"transformer_impl '{config.transformer_impl}' must be local or te")
    if config.fp8 and config.transformer_impl != "te":
        raise ValueError("--fp8 needs Transformer Engine: add --transformer-impl te")
    if config.lr_decay_style not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr_decay_style '{config.lr_decay_style}' must be cosine, linear or constant")
    if not config.mock_data and not config.data and not config.dry_run:
        raise ValueError("no training data: give --mock-data or a 'data' section (see examples/)")
    _check_sizes(config)
    return config


# (field, smallest allowed value, may it be unset): sizes are checked here, at parse time, so a
# zero or negative value is named instead of surfacing as ZeroDivisionError or a silent no-op.
_SIZES = (
    ("tensor_model_parallel_size", 1, False), ("pipeline_model_parallel_size", 1, False),
    ("virtual_pipeline_model_parallel_size", 1, True), ("context_parallel_size", 1, False),
    ("recompute_num_layers", 1, True), ("micro_batch_size", 1, False), ("global_batch_size", 1, True),
    ("seq_length", 1, False), ("train_iters", 1, False), ("lr_warmup_iters", 0, False),
    ("lr_decay_iters", 1, True), ("save_interval", 1, True), ("keep_last", 0, False),
    ("log_interval", 1, False), ("lr", 0, False), ("min_lr", 0, False), ("weight_decay", 0, False),
    ("clip_grad", 0, False), ("exit_duration_in_mins", 0, True),
)


def _check_sizes(config: TrainConfig) -> None:
    for name, smallest, optional in _SIZES:
        value = getattr(config, name)
        if value is None and optional:
            continue
        if value is None or value < smallest or value != value:  # value != value: NaN
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is {value!r}; it must be a number >= {smallest}"
                             + (" (or left unset)" if optional else ""))
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(config, name)!r}; it must lie in [0, 1)")

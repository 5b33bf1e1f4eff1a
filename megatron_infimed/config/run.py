"""The run configuration: one frozen dataclass per section, one definition per option.

| section      | what it decides                                                        |
|--------------|------------------------------------------------------------------------|
| ``model``    | preset and overrides, layer implementation, precision, frozen parts    |
| ``parallel`` | tensor / pipeline / context parallel sizes, the optimizer's sharding,  |
|              | activation recomputation                                               |
| ``batch``    | sequence length, micro and global batch, packing, loss weighting       |
| ``optim``    | learning rate and schedule, Adam, clipping, iterations, seed, NaN check |
| ``data``     | prepared shard folders and how the loader reads them, the tokenizer    |
| ``checkpoint`` | where to save and resume, how often, how to verify                   |
| ``logging``  | run folder, log interval, W&B                                          |

Each field's docstring is its ``--help`` text (``config.flags`` reads it), so an option is
documented where it is defined. Flat Megatron-LM flag names are the field names
(``--tensor-model-parallel-size``), except where a field says otherwise in ``FLAT_NAMES``
(``data.paths`` is ``--data-path``). Every section checks its values when it is built, so a bad
value fails at parse time, before any process group starts.

There is no ``eval`` section: training runs no evaluation of its own; ``infimed-eval`` does that
between stages (see the demo), with its own flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

from megatron_infimed.config.presets import PRESETS

LossWeighting = Literal["token", "sample", "square"]


def _at_least(section: object, names: tuple[str, ...], smallest: float, optional: bool = False) -> None:
    for name in names:
        value = getattr(section, name)
        if value is None and optional:
            continue
        if value is None or isinstance(value, bool) or not value >= smallest or math.isnan(value):
            raise ValueError(f"--{name.replace('_', '-')} is {value!r}; it must be a number >= {smallest}"
                             + (" (or left unset)" if optional else ""))


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    preset: str = "tiny"
    """model preset: tiny, infimed-1.7b or infimed-4b (dimensions in config/presets.py)"""
    overrides: dict = field(default_factory=dict)
    """dotted overrides of the preset, e.g. {"reduction.kind": "none", "language.num_layers": 4}"""
    transformer_impl: Literal["local", "te"] = "local"
    """layer implementation: local (plain torch, packed SDPA / varlen flash) or te (Transformer Engine)"""
    bf16: bool = False
    """bf16 weights and activations, fp32 main weights in the optimizer"""
    fp8: Literal["e4m3", "hybrid"] | None = None
    """FP8 format of the language model's GEMMs through Transformer Engine (hybrid: e4m3 forward, e5m2
    gradients); needs --transformer-impl te and --bf16"""
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    """FP8 scaling recipe (megatron's names; mxfp8 and blockwise need Blackwell / Hopper-era TE builds)"""
    fp8_amax_history_len: int = 1024
    """amax values kept per tensor for delayed scaling"""
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    """how delayed scaling picks the amax from its history"""
    freeze_vision: bool = False
    """keep the vision encoder's weights fixed (no gradients, no optimizer state)"""
    freeze_projector: bool = False
    """keep the projector's weights fixed"""
    freeze_language: bool = False
    """keep the language model's weights fixed"""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is unknown; expected one of {sorted(PRESETS)}")
        if self.fp8 and self.transformer_impl != "te":
            raise ValueError("--fp8 needs Transformer Engine: add --transformer-impl te")
        if self.transformer_impl == "te" and not self.bf16:
            # TE turns its unfused attention off for THD (packed) input: fp32 would have no backend.
            raise ValueError("--transformer-impl te needs --bf16: Transformer Engine has no fp32 attention "
                             "backend for packed (THD) sequences")
        _at_least(self, ("fp8_amax_history_len",), 1)
        if self.freeze_vision and self.freeze_projector and self.freeze_language:
            raise ValueError("every part of the model is frozen (--freeze-vision, --freeze-projector, "
                             "--freeze-language): nothing to train")


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    """ranks that split each layer's weights (megatron tensor parallelism)"""
    pipeline_model_parallel_size: int = 1
    """pipeline stages the layers are divided into"""
    virtual_pipeline_model_parallel_size: int | None = None
    """model chunks per pipeline stage (interleaved 1F1B); unset for one chunk"""
    sequence_parallel: bool = False
    """split the activations outside attention and the MLP along the sequence over the tensor-parallel
    ranks (Megatron's sequence parallelism; needs --tensor-model-parallel-size > 1)"""
    context_parallel_size: int = 1
    """ranks that split each packed sequence: every sample in 2N load-balanced chunks (THD context
    parallelism: Transformer Engine's with --transformer-impl te, K/V all-gather with local layers)"""
    use_distributed_optimizer: bool = False
    """shard optimizer state over data-parallel ranks (megatron-core's DistributedOptimizer)"""
    recompute_granularity: Literal["full", "selective"] | None = None
    """activation recomputation: full layers or selective (attention core); unset for none"""
    recompute_method: Literal["uniform", "block"] | None = None
    """how full recomputation picks layers (with --recompute-granularity full)"""
    recompute_num_layers: int | None = None
    """layers per recomputed group (uniform) or recomputed layers per stage (block)"""
    distributed_timeout_minutes: int = 10
    """minutes a collective may wait for the other ranks before the process group fails (Megatron-LM's
    default); raise it when a step or a save can keep one rank away longer"""

    def __post_init__(self) -> None:
        _at_least(self, ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                         "distributed_timeout_minutes"), 1)
        _at_least(self, ("virtual_pipeline_model_parallel_size", "recompute_num_layers"), 1, optional=True)
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError("--sequence-parallel splits the sequence over the tensor-parallel ranks: it needs "
                             "--tensor-model-parallel-size > 1")


@dataclass(frozen=True, kw_only=True)
class BatchSection:
    seq_length: int = 1024
    """token slots of one packed sequence (a micro-batch holds micro_batch_size of them)"""
    micro_batch_size: int = 1
    """packed sequences per micro-batch, laid end to end as one THD sequence"""
    global_batch_size: int | None = None
    """packed sequences per optimizer step over all data-parallel ranks; unset: one micro-batch each"""
    packing: bool = True
    """pack several samples per sequence (--no-packing pads each micro-batch to its longest sample)"""
    loss_weighting: LossWeighting = "token"
    """how samples share the loss: token (every token alike), sample (each sample alike), square (√len)"""

    def __post_init__(self) -> None:
        _at_least(self, ("seq_length", "micro_batch_size"), 1)
        _at_least(self, ("global_batch_size",), 1, optional=True)

    @property
    def micro_batch_slots(self) -> int:
        """Token slots of one micro-batch: what the pipeline exchanges, whatever its fill."""
        return self.seq_length * self.micro_batch_size


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    lr: float = 1e-4
    """peak learning rate"""
    min_lr: float = 0.0
    """learning rate at the end of the decay"""
    lr_warmup_iters: int = 0
    """iterations of linear warm-up from 0"""
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """shape of the decay after warm-up"""
    lr_decay_iters: int | None = None
    """iterations the decay spans; unset: --train-iters"""
    weight_decay: float = 0.0
    """decoupled weight decay (AdamW)"""
    adam_beta1: float = 0.9
    """Adam's first-moment decay"""
    adam_beta2: float = 0.95
    """Adam's second-moment decay"""
    clip_grad: float = 1.0
    """clip the global gradient norm to this value (0: no clipping)"""
    train_iters: int = 10
    """optimizer steps of the run (a resumed run counts from its checkpoint)"""
    seed: int = 1234
    """seed of the weights' initialisation, the data order and the mock data"""
    check_for_nan_in_loss_and_grad: bool = True
    """stop with an error naming the iteration when the loss or a gradient is NaN/inf, before the step"""

    def __post_init__(self) -> None:
        _at_least(self, ("lr", "min_lr", "weight_decay", "clip_grad", "lr_warmup_iters"), 0)
        _at_least(self, ("train_iters",), 1)
        _at_least(self, ("lr_decay_iters",), 1, optional=True)
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} is {getattr(self, name)!r}; it must lie in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    paths: tuple[str, ...] = ()
    """prepared dataset folders (each with manifest.json and shards/), the output of infimed-prepare"""
    weights: tuple[float, ...] | None = None
    """blend weights, one per path; unset: equal"""
    tokenizer: str | None = None
    """tokenizer: a SentencePiece .model, a tokenizer.json, or a folder holding one"""
    mock_data: bool = False
    """train on deterministic synthetic packed multimodal batches instead of shards"""
    packing_algorithm: Literal["bfd", "ffd"] = "bfd"
    """online packing: best-fit (bfd) or first-fit (ffd) decreasing over the buffer"""
    packing_buffer: int = 1024
    """samples the packer holds, pending and in open packs"""
    overlong: Literal["truncate", "drop"] = "truncate"
    """a sample longer than a sequence: cut its end, or drop it (counted either way)"""
    shuffle_buffer: int = 1000
    """window of the seeded shuffle within each stream; 0: no shuffling"""
    num_workers: int = 2
    """reading streams per data-parallel rank"""
    worker_processes: bool = True
    """run the streams in DataLoader worker processes (off: in the training process)"""
    num_epochs: int | None = None
    """passes over the data; unset: repeat forever"""
    image_resize: Literal["pad", "crop"] = "pad"
    """fit images to the encoder's square: pad the short side, or centre-crop"""
    jpeg_draft: bool = False
    """let PIL decode large JPEGs at a reduced size first (faster, slightly different pixels)"""
    shard_retries: int = 2
    """extra attempts to open a shard before it counts as unreadable"""
    shard_retry_delay: float = 0.5
    """seconds between those attempts"""
    reset_data_state: bool = False
    """on resume, restart the data streams at the saved epoch instead of the exact next sample"""

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, bytes)) or not all(isinstance(p, str) for p in self.paths):
            raise ValueError(f"data.paths must be a list of prepared dataset folders (paths: [/data/a, /data/b]), "
                             f"got {self.paths!r}")
        if self.weights is not None and (len(self.weights) != len(self.paths) or min(self.weights, default=0) < 0
                                         or sum(self.weights) <= 0):
            raise ValueError(f"data.weights {self.weights} must be non-negative, one per path "
                             f"({len(self.paths)}), and not all zero")
        _at_least(self, ("num_workers",), 1)
        _at_least(self, ("packing_buffer",), 1)
        _at_least(self, ("shuffle_buffer", "shard_retries", "shard_retry_delay"), 0)
        _at_least(self, ("num_epochs",), 1, optional=True)


@dataclass(frozen=True, kw_only=True)
class CheckpointSection:
    save: str | None = None
    """folder to save checkpoints to"""
    load: str | None = None
    """checkpoint folder to resume from (holds latest_checkpointed_iteration.txt); missing or empty starts
    a new run"""
    pretrained_checkpoint: str | None = None
    """weights to start a new run from (a new optimizer and schedule); ignored when --load resumes"""
    save_interval: int | None = None
    """save every this many iterations (and at the end and on a stop); unset: only then"""
    keep_last: int = 2
    """complete checkpoints to keep; 0 keeps all"""
    async_save: bool = False
    """write checkpoints in the background (megatron-core's asynchronous save)"""
    exit_duration_in_mins: float | None = None
    """save and stop after this many minutes of training"""
    verify_checkpoint: bool = True
    """check checkpoint files against their SHA-256 manifest before loading"""

    def __post_init__(self) -> None:
        _at_least(self, ("save_interval",), 1, optional=True)
        _at_least(self, ("keep_last",), 0)
        _at_least(self, ("exit_duration_in_mins",), 0, optional=True)


@dataclass(frozen=True, kw_only=True)
class LoggingSection:
    run_dir: str | None = None
    """folder for metrics.jsonl, the sample ledger and W&B files"""
    log_interval: int = 1
    """log every this many iterations"""
    wandb_project: str | None = None
    """W&B project to log to (the API key comes from the environment, never from the config)"""
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    """W&B mode"""
    debug: bool = False
    """show full tracebacks for configuration and data errors"""
    peak_tflops: float | None = None
    """dense bf16 peak of one GPU in TFLOP/s, the denominator of MFU; unset: NVIDIA's figure for an H100,
    H200, A100 or B200 (training/metrics.py), and no MFU on other devices"""

    def __post_init__(self) -> None:
        _at_least(self, ("log_interval",), 1)
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"--peak-tflops is {self.peak_tflops!r}; it must be a positive number of TFLOP/s "
                             f"(or left unset)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    batch: BatchSection = field(default_factory=BatchSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def __post_init__(self) -> None:
        self._check_layout()

    def _check_layout(self) -> None:
        """The combinations of sections that cannot run, refused before anything starts."""
        from megatron_infimed.data.pack_builder import PackLayout  # data imports this module

        parallel, seq = self.parallel, self.batch.seq_length
        multiple = PackLayout.of(self).pack_multiple
        if seq % multiple:
            reasons = [why for why, on in (
                (f"2 × context-parallel size {parallel.context_parallel_size}", parallel.context_parallel_size > 1),
                (f"tensor-parallel size {parallel.tensor_model_parallel_size} (sequence parallelism)",
                 parallel.sequence_parallel),
                (f"the {self.model.fp8_recipe} FP8 recipe", bool(self.model.fp8))) if on]
            raise ValueError(f"--seq-length {seq} must be a multiple of {multiple} ({', '.join(reasons)}): every "
                             f"pack is split or aligned by it; use {-(-seq // multiple) * multiple}")

    def check_data(self) -> None:
        """A run that trains needs data: mock data, or shards and their tokenizer (a dry run does not)."""
        if not self.data.mock_data and not self.data.paths:
            raise ValueError("no training data: give --mock-data or a 'data' section with paths (see examples/)")
        if not self.data.mock_data and not self.data.tokenizer:
            raise ValueError("training on shards needs --tokenizer (a SentencePiece .model or a tokenizer.json)")

    def to_dict(self) -> dict:
        """Nested by section, as run_config.json stores it (and as a YAML config may be written)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(section) -> dict:
    return {f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v for f in fields(section)}


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(RunConfig)}  # type: ignore[misc]
# Flat names that are not the field's own name (Megatron-LM's, or a section prefix where the
# bare name would say too little).
FLAT_NAMES = {("model", "overrides"): "model_overrides", ("data", "paths"): "data_path",
              ("data", "weights"): "data_weights"}

"""The memory planner of ``infimed-train --dry-run``: bytes per GPU, on the pipeline stage that
needs the most, before a cluster is booked (``--world-size N`` plans N GPUs from a laptop).

| quantity    | how it is counted                                              | checked against          |
|-------------|----------------------------------------------------------------|--------------------------|
| weights     | parameters on one rank × 2 B (bf16) or 4 B (fp32)              | tiny: allocated, exactly |
| gradients   | trained parameters × 4 B (DDP's fp32 ``grad_data`` buffers)    | tiny: allocated, exactly |
|             |                                                                | (but the padding below)  |
| optimizer   | trained parameters × 12 B (bf16: fp32 main copy + Adam's two   | tiny: allocated, exactly |
|             | moments) or × 8 B (fp32: the weights are the main copy);       | (dp 1)                   |
|             | ÷ data- × context-parallel size with                           |                          |
|             | ``--use-distributed-optimizer`` (megatron shards over DP × CP) |                          |
| activations | Korthikanti et al. 2022, adapted below; micro-batches in       | a formula, not measured  |
|             | flight under 1F1B                                              |                          |

Parameters on one rank: the weight matrices and the vocabulary are split by tensor parallelism,
norms and row-parallel biases are whole on every rank. Pipeline stage ``i`` holds layers
``i·L/pp … (i+1)·L/pp − 1`` (or ``vp`` chunks of ``L/(pp·vp)``); the embedding, the vision tower
and the projector sit on the first stage, the final norm and the output layer on the last (one
tensor with the embedding when they share a stage and the embeddings are tied). Frozen parts
(``--freeze-*``) have weights only. Data-parallel size: ``dp = N / (tp × pp × cp)``.

Activations of one decoder layer, bytes per token (b·s tokens per micro-batch, bf16; fp32 runs
double every term but the fp32 logits). Korthikanti's per layer is s·b·h·(34 + 5·a·s/h): norms 4h,
QKV input 2h, Q and K 4h, V 2h, softmax + dropout 5·a·s, projection input 2h, its dropout mask
h, MLP 2h + 8h + 8h + dropout mask h. For our Qwen3 layer, with q = heads × head_dim,
kv = query groups × head_dim (GQA), f the SwiGLU width:

    replicated over TP:  norm inputs 4h, QKV input 2h, fc1 input 2h               = 8h
    split by TP:         QK-norm inputs 2q + 2kv, attention Q, K, V 2q + 4kv,
                         output-projection input 2q, SwiGLU input 4f, fc2 input 2f = 6q + 6kv + 6f
    per layer:           8h/(t if SP else 1) + (6q + 6kv + 6f)/t

(MHA without QK-norm, a 4h GELU MLP and two dropout masks give back Korthikanti's 34h, 10h + 24h/t
with TP, 34h/t with TP + SP.) The ViT layer (LayerNorm, biases, MHA, GELU of width f_v) is 8c replicated and
8c + 4f_v split. The projector keeps 2·c_in + 4·c_p/t per image token. Sequence parallelism
(``--sequence-parallel``) divides the decoder's replicated terms by t; the ViT runs without it.
Context parallelism divides the decoder's tokens by cp, and the micro-batch's images over the cp
ranks (each runs the ViT and the projector on ⌈images/cp⌉ of them).

Assumptions, each a choice a reader may want to change:
- **No a·s² term.** Every attention path the trainer runs (Transformer Engine's fused attention,
  varlen flash, SDPA's flash / memory-efficient kernels) keeps Q, K, V, the output and O(a·s)
  softmax statistics, never the s×s scores: the 5·a·s/h term is 0. Selective recomputation
  (Korthikanti's remedy for that term) therefore saves only the statistics, and is counted like
  none. Unfused attention would add 5·a·s²·b/t bytes per layer (5.4 GB per layer for
  infimed-1.7b at 8,192 tokens): the reason it is never used on a GPU. (The local layers' context-
  parallel attention builds an explicit mask and runs SDPA's math kernel: the CPU reference path,
  refused on GPUs, whose extra memory this plan does not count.)
- **No dropout** (the trainer sets both dropouts to 0, and torch keeps no mask at p = 0).
- **Fused kernels**: a norm keeps its input, SwiGLU and GELU keep their input (TE, and megatron's
  fused bias-SwiGLU on CUDA). torch's composite RMSNorm and unfused SwiGLU (the CPU) keep more.
  K and V are kept at KV width (a torch varlen kernel without GQA repeats them to query width).
- **Full recomputation** (``uniform``, n layers per group) keeps each group's input, 2h per token
  (÷t with SP in the decoder), plus, once, the full activations of the group being recomputed in
  the backward; ``block`` (n layers) keeps full activations for the other layers and recomputes one at a time.
  The ViT follows the same setting (its config gets it); the projector is never recomputed.
- **Pipeline schedule**: 1F1B; stage i holds min(pp − i, m) micro-batches in flight (m micro-batches
  per step), so stage 0 holds pp × L/pp = L layers' worth (Korthikanti's observation).
  Interleaved (vp chunks): stage i runs 2(pp − i − 1) + (vp − 1)·pp + 1 chunk forwards before
  its first backward, megatron's warm-up; stage 0 holds L·(1 + (pp − 1)/(pp·vp)) layers' worth.
- **Images per micro-batch**: the most a micro-batch can hold, every slot an image token:
  ⌊seq_length × micro_batch_size / tokens_per_image⌋ (a pretraining pack of 144-token images with
  short captions comes close). The vision tower's per-layer term uses s = ⌈that / cp⌉ × patches per
  image, on the first stage, for each micro-batch in flight there.
- **Frozen parts** that nothing before them trains (a frozen ViT; a frozen projector after a frozen
  ViT) run forward only and keep no activations (``flops.passes_per_part`` says 1). A frozen part on
  the gradient path is counted like a trained one (an upper bound: megatron's frozen linear layers
  keep no input for weight gradients).
- **Sequence parallelism** applies to the decoder only (and the final norm): the trainer writes the
  image embeddings into the whole sequence and scatters it to the sequence-parallel region, so the
  ViT and the projector keep their replicated terms whole (an image's 729 patches do not split
  evenly over t anyway).
- **Context parallelism**: each cp rank runs the ViT and the projector on ⌈images/cp⌉ of the
  micro-batch's images (the embeddings are all-gathered before being split with the sequence).
  With ``--transformer-impl te`` attention keeps the rank's own K and V (Transformer Engine's THD
  context parallelism passes the others' around the ring); the local layers attend over K and V
  all-gathered from the cp ranks and keep them for the backward: 4·kv·(cp − 1)/t more bytes per
  token of the rank, per layer (``gathered_kv_bytes``).
- **Logits** on the last stage, one micro-batch: fp32 logits for the loss, 4·V/t bytes per token,
  and the final norm's input and output, 4h (÷t with SP).
- **Distributed optimizer**: megatron-core pads its buffers (each tensor starts at a multiple of
  64 elements, each bucket ends at one of lcm(dp, 128)); the plan counts parameters, not padding,
  and gives every rank trained/dp of the main weights and moments, while the real shards of a
  bucket differ by the padding they hold (tiny at dp 2: ±368 of 118,416 elements). Without it
  megatron-core pads nothing, and the plan is exact.
- **Left out**: O(s) tensors (token ids, labels, positions, loss weights, softmax statistics), the
  patch and position embeddings' inputs, gradients in flight during the backward, FP8 weight
  caches, the CUDA context, NCCL buffers and allocator fragmentation. Hence GB = 10⁹ bytes: an
  "80 GB" H100 holds 85.5 × 10⁹ (79.6 GiB), so ``--gpu-memory-gb 80`` leaves about 5.5 GB for what
  is not counted.
- The preset's vocabulary (a tokenizer may grow it; the run checks that, the plan does not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_infimed.config.flags import Mode
from megatron_infimed.config.presets import LanguageConfig, ModelConfig, VisionConfig
from megatron_infimed.config.run import RunConfig
from megatron_infimed.model.token_reduction import reduced_channels, tokens_per_image
from megatron_infimed.training.flops import PARTS, frozen_parts, passes_per_part

GB = 10**9


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How a run divides over ``world_size`` GPUs, as megatron-core lays it out."""

    world_size: int
    tensor: int
    pipeline: int
    context: int
    virtual: int | None
    data: int
    num_microbatches: int
    sequence_parallel: bool = False

    @classmethod
    def of(cls, config: RunConfig, world_size: int | None = None) -> Layout:
        """``world_size`` unset: one data-parallel replica, tp × pp × cp GPUs. Sequence parallelism is
        the config's (``ParallelConfig`` refuses it without TP)."""
        p = config.parallel
        tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
        model_parallel = tp * pp * cp
        world_size = model_parallel if world_size is None else world_size
        if world_size < 1 or world_size % model_parallel:
            raise ValueError(f"--world-size {world_size} is not a multiple of TP×PP×CP = {tp}×{pp}×{cp} "
                             f"= {model_parallel}")
        dp, mbs = world_size // model_parallel, config.batch.micro_batch_size
        gbs = config.batch.global_batch_size or mbs * dp
        if gbs % (mbs * dp):
            raise ValueError(f"--global-batch-size {gbs} must be a multiple of micro-batch size × data-parallel "
                             f"size = {mbs} × {dp}")
        return cls(world_size=world_size, tensor=tp, pipeline=pp, context=cp,
                   virtual=p.virtual_pipeline_model_parallel_size, data=dp, num_microbatches=gbs // (mbs * dp),
                   sequence_parallel=p.sequence_parallel)

    @property
    def chunks(self) -> int:
        return self.virtual or 1

    def replicated(self) -> int:
        """What divides the decoder's activations TP does not split: t under sequence parallelism, else 1."""
        return self.tensor if self.sequence_parallel else 1


def _split(value: int, tp: int, what: str) -> int:
    if value % tp:
        raise ValueError(f"{what} {value} is not divisible by --tensor-model-parallel-size {tp}")
    return value // tp


# ---- parameters on one rank ------------------------------------------------------------------

def language_layer_params(lang: LanguageConfig, tp: int) -> int:
    h, d, f = lang.hidden_size, lang.kv_channels, lang.ffn_hidden_size
    heads = _split(lang.num_attention_heads, tp, "language.num_attention_heads")
    groups = _split(lang.num_query_groups, tp, "language.num_query_groups")
    return (2 * h + 2 * d                              # input / pre-MLP RMSNorm, QK-norm: whole
            + (heads + 2 * groups) * d * h             # QKV (column-parallel)
            + heads * d * h                            # output projection (row-parallel)
            + 3 * _split(f, tp, "language.ffn_hidden_size") * h)  # SwiGLU gate + up, down


def vision_params(vis: VisionConfig, tp: int) -> int:
    c = vis.hidden_size
    _split(vis.num_attention_heads, tp, "vision.num_attention_heads")
    c_t, f_t = _split(c, tp, "vision.hidden_size"), _split(vis.ffn_hidden_size, tp, "vision.ffn_hidden_size")
    layer = (4 * c                                     # two LayerNorms, weight and bias
             + 3 * c_t * c + 3 * c_t                   # QKV and its bias (column-parallel)
             + c_t * c + c                             # output projection, bias whole (row-parallel)
             + f_t * c + f_t + c * f_t + c)            # fc1 with bias, fc2 with bias whole
    return vis.num_layers * layer + c * 3 * vis.patch_size**2 + c + vis.num_patches * c + 2 * c


def projector_params(config: ModelConfig, tp: int) -> int:
    hidden = _split(config.projector_hidden_size or config.language.hidden_size, tp, "projector hidden size")
    return reduced_channels(config) * hidden + hidden + hidden * config.language.hidden_size \
        + config.language.hidden_size


def stage_params(config: ModelConfig, layout: Layout, stage: int) -> dict[str, int]:
    """Parameters of each part on one rank of pipeline stage ``stage`` (all its chunks)."""
    lang, tp = config.language, layout.tensor
    virtual_stages = layout.pipeline * layout.chunks
    if lang.num_layers % virtual_stages:
        raise ValueError(f"language.num_layers {lang.num_layers} is not divisible by pipeline stages × chunks "
                         f"= {virtual_stages}")
    vocab = _split(lang.vocab_size, tp, "language.vocab_size") * lang.hidden_size
    params = dict.fromkeys(PARTS, 0)
    for chunk in range(layout.chunks):
        virtual = chunk * layout.pipeline + stage
        first, last = virtual == 0, virtual == virtual_stages - 1
        params["language"] += lang.num_layers // virtual_stages * language_layer_params(lang, tp)
        if first:
            params["language"] += vocab
            params["vision"] += vision_params(config.vision, tp)
            params["projector"] += projector_params(config, tp)
        if last:
            params["language"] += lang.hidden_size + (0 if first and lang.tie_word_embeddings else vocab)
    return params


@dataclass(frozen=True)
class StateBytes:
    weights: int
    grads: int
    optimizer: int


def state_bytes(params: dict[str, int], config: RunConfig, data_parallel: int = 1) -> StateBytes:
    """Weights, fp32 gradient buffers and optimizer state of ``params`` under megatron-core mixed
    precision (bf16) or fp32; frozen parts have weights only. ``data_parallel``: the ranks the
    distributed optimizer shards over (data × context parallel, as megatron-core's
    ``intra_dp_cp`` group)."""
    frozen = frozen_parts(config.model)
    trained = sum(n for part, n in params.items() if part not in frozen)
    bf16 = config.model.bf16
    per_trained = 12 if bf16 else 8  # bf16: fp32 main weights + exp_avg + exp_avg_sq; fp32: the moments
    optimized = math.ceil(trained / data_parallel) if config.parallel.use_distributed_optimizer else trained
    return StateBytes(weights=(2 if bf16 else 4) * sum(params.values()), grads=4 * trained,
                      optimizer=per_trained * optimized)


# ---- activations ------------------------------------------------------------------------------

def language_layer_bytes(lang: LanguageConfig, layout: Layout) -> float:
    """bf16 bytes one decoder layer keeps per token, without recomputation."""
    h, d, f = lang.hidden_size, lang.kv_channels, lang.ffn_hidden_size
    q, kv = lang.num_attention_heads * d, lang.num_query_groups * d
    return 8 * h / layout.replicated() + (6 * q + 6 * kv + 6 * f) / layout.tensor


def gathered_kv_bytes(lang: LanguageConfig, layout: Layout, transformer_impl: str) -> float:
    """bf16 bytes per token one decoder layer keeps beyond ``language_layer_bytes`` under context
    parallelism: the other cp ranks' K and V, which the local layers all-gather and attend over
    (``model/context_parallel.py``); Transformer Engine's ring attention keeps none."""
    if layout.context == 1 or transformer_impl != "local":
        return 0.0
    return 4 * lang.num_query_groups * lang.kv_channels * (layout.context - 1) / layout.tensor


def vision_layer_bytes(vis: VisionConfig, layout: Layout) -> float:
    """bf16 bytes one ViT layer keeps per patch, without recomputation (no sequence parallelism)."""
    c, f = vis.hidden_size, vis.ffn_hidden_size
    return 8 * c + (8 * c + 4 * f) / layout.tensor


@dataclass(frozen=True)
class StackBytes:
    """Per token of one micro-batch: what ``layers`` layers keep, and the workspace the backward of
    a recomputed group needs once."""

    kept: float
    workspace: float


def stack_bytes(layer: float, layers: int, checkpoint: float, config: RunConfig) -> StackBytes:
    """``layers`` layers of ``layer`` bytes per token; ``checkpoint``: the bytes per token of the input a
    recomputed group keeps."""
    p = config.parallel
    if p.recompute_granularity != "full":
        return StackBytes(layers * layer, 0.0)  # selective: see "No a·s² term"
    if p.recompute_method is None or p.recompute_num_layers is None:
        raise ValueError("--recompute-granularity full needs --recompute-method (uniform or block) and "
                         "--recompute-num-layers, as megatron-core does")
    n = min(p.recompute_num_layers, layers)
    if p.recompute_method == "uniform":
        return StackBytes(math.ceil(layers / n) * checkpoint, n * layer)
    return StackBytes(n * checkpoint + (layers - n) * layer, layer if n else 0.0)


def in_flight(layout: Layout, stage: int) -> tuple[int, int]:
    """(chunk forwards held, of them the first chunk's) on ``stage`` at its peak under 1F1B."""
    pp, m = layout.pipeline, layout.num_microbatches
    if layout.virtual is None:
        held = min(pp - stage, m)
        return held, held
    vp = layout.virtual
    held = min(2 * (pp - stage - 1) + (vp - 1) * pp + 1, m * vp)
    # Megatron's interleaved order: forward k runs chunk (k // pp) % vp.
    return held, sum(1 for k in range(held) if (k // pp) % vp == 0)


def images_per_micro_batch(config: RunConfig, model_config: ModelConfig) -> int:
    """The most one micro-batch can hold: every slot an image token."""
    return config.batch.micro_batch_slots // tokens_per_image(model_config)


def stage_activation_bytes(config: RunConfig, model_config: ModelConfig, layout: Layout,
                           stage: int) -> dict[str, float]:
    """Activation bytes on one rank of ``stage`` at its peak, per part, and for one micro-batch."""
    lang, vis = model_config.language, model_config.vision
    scale = 1 if config.model.bf16 else 2  # fp32 activations: twice the bf16 bytes
    tokens = config.batch.micro_batch_slots / layout.context
    held, first_held = in_flight(layout, stage)
    layers = lang.num_layers // (layout.pipeline * layout.chunks)
    layer = language_layer_bytes(lang, layout) + gathered_kv_bytes(lang, layout, config.model.transformer_impl)
    language = stack_bytes(layer, layers, 2 * lang.hidden_size / layout.replicated(), config)
    out = {"language": held * language.kept * tokens * scale, "vision": 0.0, "projector": 0.0, "logits": 0.0}
    workspace = language.workspace * tokens * scale
    one = layout.chunks * language.kept * tokens * scale
    images = math.ceil(images_per_micro_batch(config, model_config) / layout.context)  # this CP rank's share
    passes = passes_per_part(frozen_parts(config.model))
    if stage == 0 and passes["vision"] > 1:
        vision = stack_bytes(vision_layer_bytes(vis, layout), vis.num_layers, 2 * vis.hidden_size, config)
        patches = images * vis.num_patches
        out["vision"] = first_held * vision.kept * patches * scale
        one += vision.kept * patches * scale
        workspace = max(workspace, vision.workspace * patches * scale)
    if stage == 0 and passes["projector"] > 1:
        hidden = model_config.projector_hidden_size or lang.hidden_size
        per_micro_batch = (2 * reduced_channels(model_config) + 4 * hidden / layout.tensor) \
            * images * tokens_per_image(model_config) * scale
        out["projector"] = first_held * per_micro_batch
        one += per_micro_batch
    if stage == layout.pipeline - 1:
        out["logits"] = tokens * (4 * lang.vocab_size / layout.tensor
                                  + 4 * lang.hidden_size / layout.replicated() * scale)
        one += out["logits"]
    out["recompute_workspace"] = workspace
    out["total"] = sum(out.values())
    out["per_micro_batch"] = one
    return out


# ---- the plan ---------------------------------------------------------------------------------

def plan_memory(config: RunConfig, model_config: ModelConfig, world_size: int | None = None,
                gpu_memory_gb: float = Mode.gpu_memory_gb) -> dict:
    """The dry run's ``memory`` object: the stage with the largest total, in GB (10⁹ bytes), for the
    layout ``config.parallel`` sets (sequence parallelism included) over ``world_size`` GPUs."""
    layout = Layout.of(config, world_size)
    stages = []
    for stage in range(layout.pipeline):
        state = state_bytes(stage_params(model_config, layout, stage), config, layout.data * layout.context)
        activations = stage_activation_bytes(config, model_config, layout, stage)
        total = state.weights + state.grads + state.optimizer + math.ceil(activations["total"])
        stages.append((total, stage, state, activations))
    total, stage, state, activations = max(stages, key=lambda s: (s[0], -s[1]))

    def gb(value: float) -> float:
        return round(value / GB, 3)

    return {
        "weights_gb": gb(state.weights), "grads_gb": gb(state.grads), "optimizer_gb": gb(state.optimizer),
        "activations_gb": gb(activations["total"]), "total_gb": gb(total),
        "fits": total <= gpu_memory_gb * GB, "gpu_memory_gb": gpu_memory_gb, "stage": stage,
        "activations_per_micro_batch_gb": gb(activations["per_micro_batch"]),
        "in_flight_micro_batches": in_flight(layout, stage)[0],
        "activations_by_part_gb": {k: gb(v) for k, v in activations.items() if k not in ("total", "per_micro_batch")},
        "stage_totals_gb": [gb(s[0]) for s in stages],
        "layout": {"world_size": layout.world_size, "tp": layout.tensor, "pp": layout.pipeline,
                   "cp": layout.context, "vp": layout.virtual, "dp": layout.data,
                   "num_microbatches": layout.num_microbatches, "sequence_parallel": layout.sequence_parallel,
                   "distributed_optimizer": config.parallel.use_distributed_optimizer},
        "bytes": {"weights": state.weights, "grads": state.grads, "optimizer": state.optimizer,
                  "activations": math.ceil(activations["total"]), "total": total},
        "assumptions": _assumptions(config, model_config, layout),
    }


def _assumptions(config: RunConfig, model_config: ModelConfig, layout: Layout) -> list[str]:
    notes = [
        "GB = 1e9 bytes; the CUDA context, NCCL buffers and allocator fragmentation are not counted "
        "(an '80 GB' H100 holds 85.5e9 bytes)",
        f"{images_per_micro_batch(config, model_config)} images per micro-batch: every one of its "
        f"{config.batch.micro_batch_slots} slots an image token ({tokens_per_image(model_config)} per image)",
        "attention keeps no a*s^2 scores (flash / fused kernels); selective recomputation counts as none",
        "activations: Korthikanti et al. 2022 adapted to GQA, SwiGLU, QK-norm and no dropout "
        "(training/memory.py); 1F1B micro-batches in flight",
    ]
    frozen = sorted(frozen_parts(config.model))
    if frozen:
        notes.append(f"frozen {', '.join(frozen)}: weights only, no gradients or optimizer state")
    if layout.sequence_parallel:
        notes.append("sequence parallelism: the decoder's norm and residual activations split over TP; "
                     "the vision tower and the projector keep theirs whole")
    if config.parallel.use_distributed_optimizer:
        notes.append("distributed optimizer: DDP bucket padding not counted (< 64 elements per tensor + "
                     "lcm(dp, 128) per bucket)")
    if layout.context > 1:
        images = images_per_micro_batch(config, model_config)
        notes.append(f"context parallelism splits the decoder's tokens over {layout.context} ranks; each runs "
                     f"the vision tower and the projector on {math.ceil(images / layout.context)} of the "
                     f"{images} images of a micro-batch")
        if config.model.transformer_impl == "local":
            notes.append("local layers under context parallelism keep the K and V they all-gather from the "
                         "other CP ranks (Transformer Engine's ring attention does not)")
    return notes

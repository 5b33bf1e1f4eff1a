"""Core attention for packed (THD) and ordinary (SBHD) inputs without Transformer Engine.

A packed micro-batch is one sequence of T tokens holding several samples; ``cu_seqlens`` marks
their boundaries. Each sample must attend only to itself, causally:

| strategy                         | cost             | used when                            |
|----------------------------------|------------------|--------------------------------------|
| one T×T block-diagonal mask      | O(T²) memory     | never (the issue forbids it on GPU)  |
| scaled-dot-product per segment   | O(Σ lᵢ²)         | CPU, and GPU without varlen kernels  |
| varlen flash attention           | O(Σ lᵢ²), fused  | CUDA with torch's varlen kernel       |

Under context parallelism (``config.context_parallel_size`` > 1) each rank holds 2 chunks of every
sample; its queries attend to K/V all-gathered over the CP group (``model/context_parallel.py``).

The vision encoder uses the same module with ``AttnMaskType.no_mask``: bidirectional within each
image (each image is its own batch row). It never touches megatron-core's CUDA global memory
buffer, so it also runs on the CPU backend.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide

from megatron_infimed.model import context_parallel

try:  # torch ≥ 2.9 ships a varlen flash-attention entry point on CUDA.
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - depends on the torch build
    _varlen_attn = None


@functools.lru_cache(maxsize=8)
def _parameter_names(function) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def varlen_attention(varlen, query, key, value, cu_seqlens: torch.Tensor, max_len: int, causal: bool,
                     scale: float) -> torch.Tensor:
    """Call torch's ``varlen_attn`` whichever of its signatures this torch has: 2.9 takes
    ``is_causal`` and no scale; later releases take ``scale`` and ``window_size`` (causal is the
    window (-1, 0)); GQA (``enable_gqa``) arrived later still. What a release lacks is done here:
    K/V heads repeated, the query pre-scaled so the kernel's default 1/√d gives ``scale``."""
    params = _parameter_names(varlen)
    kwargs = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    elif "is_causal" in params:
        kwargs["is_causal"] = causal
    elif causal:
        raise RuntimeError("this torch's varlen_attn takes neither window_size nor is_causal; cannot run causally")
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale * math.sqrt(query.shape[-1]) - 1.0) > 1e-12:
        query = query * (scale * math.sqrt(query.shape[-1]))
    if query.shape[1] != key.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


def attention_per_segment(query, key, value, cu_seqlens: torch.Tensor, causal: bool, scale: float):
    """THD attention: [T, np, hn] × [T, ng, hn] → [T, np, hn], each segment on its own."""
    # GQA: SDPA maps each query head to its K/V group itself (no repeated K/V copies).
    gqa = query.shape[1] != key.shape[1]
    bounds = cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        # SDPA wants [batch, heads, seq, dim].
        q = query[start:end].transpose(0, 1).unsqueeze(0)
        k = key[start:end].transpose(0, 1).unsqueeze(0)
        v = value[start:end].transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
        outputs.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(outputs, dim=0)


class PackedDotProductAttention(MegatronModule):
    """Drop-in ``core_attention`` for megatron-core's ``SelfAttention`` (same constructor)."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(
                required_pgs=["tp", "cp"] if config.context_parallel_size > 1 else ["tp"])
        # The vision encoder runs at CP=1 inside a CP>1 world: only its config says which applies.
        self.cp_group = pg_collection.cp if config.context_parallel_size > 1 else None
        if self.cp_group is not None and torch.cuda.is_available():
            raise ValueError("--context-parallel-size > 1 on GPUs needs --transformer-impl te: the local layers' CP "
                             "attention (K/V all-gathered, an explicit causal mask per sample) is the exact "
                             "reference the CPU tests run, with O(l²/cp) memory per sample, not a GPU path")
        tp = pg_collection.tp.size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.causal = attn_mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        head_dim = config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError("PackedDotProductAttention does not take an attention bias")
        if self.training and self.dropout > 0:
            raise ValueError("attention dropout is not supported by PackedDotProductAttention; set it to 0")
        causal = self.causal if attn_mask_type is None else attn_mask_type in (
            AttnMaskType.causal, AttnMaskType.padding_causal)
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            out = self._thd(query, key, value, packed_seq_params, causal)
            return out.reshape(out.shape[0], -1)
        # SBHD: [s, b, heads, hn] → [b, heads, s, hn].
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        mask = None
        if attention_mask is not None and not causal:
            # megatron masks are True where attention is NOT allowed.
            mask = ~attention_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             scale=self.scale, enable_gqa=q.shape[1] != k.shape[1])
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    def _thd(self, query, key, value, params, causal):
        cu = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        if self.cp_group is not None:
            shard = context_parallel.ContextShard.of(cu.tolist(), self.cp_group, query.device)
            return context_parallel.attention(query, key, value, shard, causal, self.scale)
        if _varlen_attn is not None and query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
            max_len = params.max_seqlen_q or int((cu[1:] - cu[:-1]).max())
            return varlen_attention(_varlen_attn, query, key, value, cu, max_len, causal, self.scale)
        return attention_per_segment(query, key, value, cu, causal, self.scale)

"""The parameter mapping between megatron-core and Hugging Face, as one table.

Each row names one megatron-core parameter (``{i}`` = global layer number), the Hugging Face
tensor(s) it is made of, their shapes in named dimensions, and how they are joined:

| join    | megatron tensor                          | Hugging Face tensors                 |
|---------|------------------------------------------|--------------------------------------|
| copy    | the same tensor                          | one                                  |
| qkv     | per query group g: [q heads of g; k; v]  | q_proj, k_proj, v_proj               |
| gate_up | [gate; up] (SwiGLU fc1)                  | gate_proj, up_proj                   |

Hugging Face names are relative to a part's root; ``HF_PREFIXES`` says where that root sits in
each folder format. The vision encoder has no GQA: its ``qkv`` join uses one group per head,
which is exactly megatron-core's ``SelfAttention`` split with ``num_query_groups = heads``.

Tied embeddings: the ``lm_head`` row exists only when ``tie_word_embeddings`` is false; a tied
last pipeline stage's ``output_layer.weight`` is read from the word embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.model.token_reduction import reduced_channels

PARTS = ("language", "lm_head", "vision", "projector")


@dataclass(frozen=True)
class Row:
    part: str
    megatron: str
    hf: tuple[str, ...]
    shapes: tuple[str, ...]  # one per hf tensor, named dims separated by spaces
    join: str = "copy"


def _r(part: str, megatron: str, hf: str | tuple[str, ...], shapes: str | tuple[str, ...], join: str = "copy") -> Row:
    hf = (hf,) if isinstance(hf, str) else hf
    shapes = (shapes,) if isinstance(shapes, str) else shapes
    return Row(part, megatron, hf, shapes, join)


_L, _V = "language_model.decoder.layers.{i}.", "vision_model.decoder.layers.{i}."

# fmt: off
TABLE: tuple[Row, ...] = (
    # --- Qwen3 decoder (Qwen3Model) ---
    _r("language", "language_model.embedding.word_embeddings.weight", "embed_tokens.weight", "vocab hidden"),
    _r("language", _L + "input_layernorm.weight", "layers.{i}.input_layernorm.weight", "hidden"),
    _r("language", _L + "self_attention.linear_qkv.weight",
       ("layers.{i}.self_attn.q_proj.weight", "layers.{i}.self_attn.k_proj.weight",
        "layers.{i}.self_attn.v_proj.weight"),
       ("q hidden", "kv hidden", "kv hidden"), "qkv"),
    _r("language", _L + "self_attention.q_layernorm.weight", "layers.{i}.self_attn.q_norm.weight", "head_dim"),
    _r("language", _L + "self_attention.k_layernorm.weight", "layers.{i}.self_attn.k_norm.weight", "head_dim"),
    _r("language", _L + "self_attention.linear_proj.weight", "layers.{i}.self_attn.o_proj.weight", "hidden q"),
    _r("language", _L + "pre_mlp_layernorm.weight", "layers.{i}.post_attention_layernorm.weight", "hidden"),
    _r("language", _L + "mlp.linear_fc1.weight", ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight"),
       ("ffn hidden", "ffn hidden"), "gate_up"),
    _r("language", _L + "mlp.linear_fc2.weight", "layers.{i}.mlp.down_proj.weight", "hidden ffn"),
    _r("language", "language_model.decoder.final_layernorm.weight", "norm.weight", "hidden"),
    _r("lm_head", "language_model.output_layer.weight", "lm_head.weight", "vocab hidden"),
    # --- SigLIP vision encoder (SiglipVisionModel) ---
    _r("vision", "vision_model.conv1.weight", "embeddings.patch_embedding.weight", "hidden channels patch patch"),
    _r("vision", "vision_model.conv1.bias", "embeddings.patch_embedding.bias", "hidden"),
    _r("vision", "vision_model.position_embeddings.weight", "embeddings.position_embedding.weight", "positions hidden"),
    _r("vision", _V + "input_layernorm.weight", "encoder.layers.{i}.layer_norm1.weight", "hidden"),
    _r("vision", _V + "input_layernorm.bias", "encoder.layers.{i}.layer_norm1.bias", "hidden"),
    _r("vision", _V + "self_attention.linear_qkv.weight",
       ("encoder.layers.{i}.self_attn.q_proj.weight", "encoder.layers.{i}.self_attn.k_proj.weight",
        "encoder.layers.{i}.self_attn.v_proj.weight"), ("hidden hidden",) * 3, "qkv"),
    _r("vision", _V + "self_attention.linear_qkv.bias",
       ("encoder.layers.{i}.self_attn.q_proj.bias", "encoder.layers.{i}.self_attn.k_proj.bias",
        "encoder.layers.{i}.self_attn.v_proj.bias"), ("hidden",) * 3, "qkv"),
    _r("vision", _V + "self_attention.linear_proj.weight", "encoder.layers.{i}.self_attn.out_proj.weight",
       "hidden hidden"),
    _r("vision", _V + "self_attention.linear_proj.bias", "encoder.layers.{i}.self_attn.out_proj.bias", "hidden"),
    _r("vision", _V + "pre_mlp_layernorm.weight", "encoder.layers.{i}.layer_norm2.weight", "hidden"),
    _r("vision", _V + "pre_mlp_layernorm.bias", "encoder.layers.{i}.layer_norm2.bias", "hidden"),
    _r("vision", _V + "mlp.linear_fc1.weight", "encoder.layers.{i}.mlp.fc1.weight", "ffn hidden"),
    _r("vision", _V + "mlp.linear_fc1.bias", "encoder.layers.{i}.mlp.fc1.bias", "ffn"),
    _r("vision", _V + "mlp.linear_fc2.weight", "encoder.layers.{i}.mlp.fc2.weight", "hidden ffn"),
    _r("vision", _V + "mlp.linear_fc2.bias", "encoder.layers.{i}.mlp.fc2.bias", "hidden"),
    _r("vision", "vision_model.ln_post.weight", "post_layernorm.weight", "hidden"),
    _r("vision", "vision_model.ln_post.bias", "post_layernorm.bias", "hidden"),
    # --- projector (Linear-GELU-Linear) ---
    _r("projector", "projector.encoder.linear_fc1.weight", "linear_1.weight", "mid in"),
    _r("projector", "projector.encoder.linear_fc1.bias", "linear_1.bias", "mid"),
    _r("projector", "projector.encoder.linear_fc2.weight", "linear_2.weight", "out mid"),
    _r("projector", "projector.encoder.linear_fc2.bias", "linear_2.bias", "out"),
)
# fmt: on

# Where each part's root sits in each folder format ("siglip" sources may also carry "vision_model.").
HF_PREFIXES: dict[str, dict[str, str]] = {
    "qwen3": {"language": "model.", "lm_head": ""},
    "siglip": {"vision": ""},
    "infimed": {"language": "model.language_model.", "lm_head": "", "vision": "model.vision_tower.",
                "projector": "model.multi_modal_projector."},
}


def dims(config: ModelConfig, part: str) -> dict[str, int]:
    """Named dimensions of one part, for the shape strings of the table."""
    lang, vis = config.language, config.vision
    if part in ("language", "lm_head"):
        return {"vocab": lang.vocab_size, "hidden": lang.hidden_size, "ffn": lang.ffn_hidden_size,
                "head_dim": lang.kv_channels, "q": lang.num_attention_heads * lang.kv_channels,
                "kv": lang.num_query_groups * lang.kv_channels}
    if part == "vision":
        return {"hidden": vis.hidden_size, "ffn": vis.ffn_hidden_size, "channels": 3, "patch": vis.patch_size,
                "positions": vis.num_patches}
    return {"in": reduced_channels(config), "mid": config.projector_hidden_size or lang.hidden_size,
            "out": lang.hidden_size}


def num_layers(config: ModelConfig, part: str) -> int:
    return config.vision.num_layers if part == "vision" else config.language.num_layers


@dataclass(frozen=True)
class Entry:
    """One row made concrete for one layer: names and shapes filled in."""

    row: Row
    layer: int | None
    megatron: str
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]


def entries(config: ModelConfig, parts: tuple[str, ...] = PARTS) -> list[Entry]:
    """Every parameter of the model in table order, with ``lm_head`` only when untied."""
    out = []
    for row in TABLE:
        if row.part not in parts or (row.part == "lm_head" and config.language.tie_word_embeddings):
            continue
        named = dims(config, row.part)
        shapes = tuple(tuple(named[d] for d in s.split()) for s in row.shapes)
        layers = range(num_layers(config, row.part)) if "{i}" in row.megatron else [None]
        for i in layers:
            out.append(Entry(row, i, _fill(row.megatron, i), tuple(_fill(h, i) for h in row.hf), shapes))
    return out


def _fill(name: str, layer: int | None) -> str:
    """``name`` with its ``{i}`` set to ``layer``; unchanged for a row without layers."""
    return name if layer is None else name.format(i=layer)


def query_groups(config: ModelConfig, part: str) -> int:
    return config.vision.num_attention_heads if part == "vision" else config.language.num_query_groups


def join(entry: Entry, tensors: list[torch.Tensor], config: ModelConfig) -> torch.Tensor:
    """Hugging Face tensors (in ``entry.hf`` order) → the full megatron-core tensor."""
    if entry.row.join == "copy":
        return tensors[0]
    if entry.row.join == "gate_up":
        return torch.cat(tensors, dim=0)
    groups = query_groups(config, entry.row.part)
    q, k, v = (t.reshape(groups, -1, *t.shape[1:]) for t in tensors)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tensors[0].shape[1:])


def split_rows(entry: Entry, config: ModelConfig) -> list[list[tuple[int, int]]]:
    """For each Hugging Face tensor (``entry.hf`` order): the (first row, rows) runs of the megatron
    tensor it is made of, in order; e.g. q_proj = the q rows of every query group."""
    rows = [shape[0] for shape in entry.hf_shapes]
    if entry.row.join == "copy":
        return [[(0, rows[0])]]
    if entry.row.join == "gate_up":
        return [[(0, rows[0])], [(rows[0], rows[1])]]
    groups = query_groups(config, entry.row.part)
    per_group = [r // groups for r in rows]  # q, k, v rows of one group
    block = sum(per_group)
    starts = [sum(per_group[:i]) for i in range(3)]
    return [[(g * block + start, n) for g in range(groups)] for start, n in zip(starts, per_group)]


def split(entry: Entry, fused: torch.Tensor, config: ModelConfig) -> list[torch.Tensor]:
    """The full megatron-core tensor → Hugging Face tensors (inverse of ``join``); a tensor made of
    one run of rows is a view of ``fused``."""
    return [fused[runs[0][0]:runs[0][0] + runs[0][1]] if len(runs) == 1
            else torch.cat([fused[start:start + n] for start, n in runs])
            for runs in split_rows(entry, config)]


def megatron_shape(entry: Entry) -> tuple[int, ...]:
    if entry.row.join == "copy":
        return entry.hf_shapes[0]
    return (sum(s[0] for s in entry.hf_shapes), *entry.hf_shapes[0][1:])

"""InfiMedModel: SigLIP-style ViT → image-token reduction → MLP projector → Qwen3-style decoder.

The decoder is megatron-core's ``GPTModel``; the vision encoder is its ``CLIPViTModel`` (SigLIP
subtype) and the projector its ``MultimodalProjector``. This file only wires them together:

1. the first pipeline stage embeds the text and writes the projected image tokens over the
   positions that hold ``image_token_id`` (in order of appearance);
2. the decoder runs on the packed sequence (``PackedSeqParams``, THD): RoPE positions restart
   and attention stays inside each sample. Under context parallelism each rank keeps its chunks
   of the merged sequence (``model/context_parallel.py``); under sequence parallelism the merged
   sequence is then scattered over the tensor-parallel ranks, so image embeddings are always
   written before any split;
3. the last stage returns the per-token loss (``labels`` given) or the logits.

Tensors follow megatron's shapes: tokens ``[1, T]`` (one packed row), hidden ``[T, 1, H]``.
"""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.vision.clip_vit_model import CLIPViTModel
from megatron.core.models.vision.multimodal_projector import MultimodalProjector
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import ParallelConfig
from megatron_infimed.model import specs
from megatron_infimed.model.context_parallel import ContextShard
from megatron_infimed.model.pixels import normalize_images
from megatron_infimed.model.token_reduction import reduce_image_tokens, reduced_channels, tokens_per_image
from megatron_infimed.model.transformer_configs import (
    Fp8,
    Target,
    language_kwargs,
    projector_kwargs,
    vision_kwargs,
)


class InfiMedModel(MegatronModule):
    def __init__(self, config: ModelConfig, *, pre_process: bool = True, post_process: bool = True,
                 parallel: ParallelConfig | None = None, transformer_impl: str = "local",
                 dtype: torch.dtype = torch.float32, vp_stage: int | None = None, fp8: Fp8 | None = None):
        parallel = parallel or ParallelConfig()
        target = Target.here(transformer_impl)
        lang_tc = TransformerConfig(**language_kwargs(config, parallel, dtype, target, fp8))
        super().__init__(config=lang_tc)
        self.model_config = config
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process, self.post_process = pre_process, post_process
        self.image_tokens = tokens_per_image(config)
        self.share_embeddings_and_output_weights = config.language.tie_word_embeddings
        self.language_model = GPTModel(
            config=lang_tc, transformer_layer_spec=specs.language_block_spec(transformer_impl, lang_tc, vp_stage),
            vocab_size=config.language.vocab_size,
            max_sequence_length=config.language.max_position_embeddings,
            pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=config.language.tie_word_embeddings,
            position_embedding_type="rope", rotary_base=config.language.rotary_base,
            vp_stage=vp_stage,
            # The image embeddings join the sequence first; ``forward`` scatters it afterwards.
            scatter_embedding_sequence_parallel=False,
        )
        self.vision_model = self.projector = None
        if pre_process:
            vis = config.vision
            self.vision_model = CLIPViTModel(
                TransformerConfig(**vision_kwargs(config, parallel, dtype, target, fp8)),
                specs.vision_layer_spec(transformer_impl),
                ln_pre_impl=specs.vision_norm(transformer_impl), ln_post_impl=specs.vision_norm(transformer_impl),
                add_class_token=False, class_token_len=0, patch_dim=vis.patch_size,
                # SigLIP's 'valid' patch conv drops the border: 384 px / 14 → 27 patches (378 px).
                img_h=vis.grid_size * vis.patch_size, img_w=vis.grid_size * vis.patch_size,
                model_subtype="siglip",
            )
            self.projector = MultimodalProjector(
                TransformerConfig(**projector_kwargs(config, parallel, dtype, target, fp8)),
                specs.projector_spec(transformer_impl), projector_type="mlp",
                input_size=reduced_channels(config),
            )

    # megatron's schedules hand the previous stage's activations to the first module of a chunk.
    def set_input_tensor(self, input_tensor) -> None:
        if isinstance(input_tensor, list):
            input_tensor = input_tensor[0]
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def encode_images(self, images: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """[K, 3, H, W] pixels → [K × tokens_per_image, H_lang] embeddings for the decoder. uint8
        pixels (training's packs) are normalised here, on the model's device, with the vision
        config's mean and std; float images are taken as already normalised (generation). The
        normalised images are cast to ``dtype`` (the activations' dtype) before the encoder."""
        if images.dtype == torch.uint8:
            vision = self.model_config.vision
            images = normalize_images(images, vision.image_mean, vision.image_std)
        if dtype is not None:
            images = images.to(dtype)
        patches = self.vision_model(images)  # [K, grid², C]
        reduced = reduce_image_tokens(patches, self.model_config)
        return self.projector(reduced.reshape(-1, reduced.shape[-1]))

    def embed(self, tokens: Tensor, position_ids: Tensor, images: Tensor | None,
              images_per_sample: list[int] | None = None, sample_ids: list[str] | None = None,
              cu_seqlens: Tensor | None = None, checked: bool = False,
              context: ContextShard | None = None) -> Tensor:
        """Text embeddings with image embeddings written over the image-token positions: [L, B, H].

        Images fill the image positions of ``tokens`` [B, L] in reading order: row by row. With
        ``context`` (B = 1), the rows are this context-parallel rank's tokens only, the images'
        encoding is divided over the CP group, and the image positions are found in the whole
        sequence, so each rank writes the embeddings of the images whose tokens it holds.
        """
        is_image = tokens == self.model_config.image_token_id
        num_images = 0 if images is None else images.shape[0]
        if not checked:
            self._check_image_count(is_image.view(-1), num_images, images_per_sample, sample_ids, cu_seqlens)
        if context is not None:
            # Which image row each position holds (counted over the whole sequence), then this rank's.
            image_row = context.take(is_image.long().cumsum(-1) - 1)
            tokens, position_ids, is_image = (context.take(t) for t in (tokens, position_ids, is_image))
        embeddings = self.language_model.embedding(input_ids=tokens, position_ids=position_ids)
        if num_images == 0:
            return embeddings
        if context is None:
            features = self.encode_images(images, embeddings.dtype).to(embeddings.dtype)
        else:
            trainable = any(p.requires_grad for m in (self.vision_model, self.projector) for p in m.parameters())
            features = context.gather_images(images, lambda part: self.encode_images(part, embeddings.dtype),
                                             self.image_tokens, embeddings.shape[-1], embeddings.dtype,
                                             trainable and torch.is_grad_enabled())
            # Each position's image row (row 0 for text, then not taken): no boolean indexing, so no
            # device-to-host sync for the count.
            rows = features.index_select(0, image_row.clamp(min=0).view(-1)).unsqueeze(1)
            return torch.where(is_image.view(-1, 1, 1), rows, embeddings)
        batch_first = embeddings.transpose(0, 1)  # scatter in the tokens' [B, L] order
        mask = is_image.unsqueeze(-1).expand_as(batch_first)
        return batch_first.masked_scatter(mask, features).transpose(0, 1)

    def _check_image_count(self, is_image, num_images, images_per_sample, sample_ids, cu_seqlens):
        found = int(is_image.sum())
        if found == num_images * self.image_tokens:
            return
        where = ""
        if images_per_sample and sample_ids and cu_seqlens is not None:
            bounds = cu_seqlens.tolist()
            for i, (sid, n) in enumerate(zip(sample_ids, images_per_sample)):
                got = int(is_image[bounds[i]:bounds[i + 1]].sum())
                if got != n * self.image_tokens:
                    where = (f" in sample '{sid}': {got} image tokens for {n} image(s), expected "
                             f"{n * self.image_tokens}")
                    break
        raise ValueError(f"image placeholder / image count mismatch{where or ''}: the batch holds "
                         f"{found} image tokens (= {found / self.image_tokens:g} images at "
                         f"{self.image_tokens} tokens each) but {num_images} image(s)")

    def check_pack(self, pack) -> None:
        """The checks ``forward`` makes, on a pack still on the host (``data.pack.Pack``): the
        training feed calls it before the pack moves, so the device needs no sync to check."""
        self.check_lengths(pack.cu_seqlens, pack.sample_ids)
        is_image = pack.tokens == self.model_config.image_token_id
        self._check_image_count(is_image, pack.images.shape[0], pack.images_per_sample, pack.sample_ids,
                                pack.cu_seqlens)

    def check_lengths(self, cu_seqlens: Tensor, sample_ids: list[str] | None) -> None:
        limit = self.model_config.language.max_position_embeddings
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        for i, length in enumerate(lengths):
            if length > limit:
                name = sample_ids[i] if sample_ids and i < len(sample_ids) else f"segment {i}"
                raise ValueError(f"sample '{name}' has {length} tokens, longer than the model's maximum "
                                 f"sequence length {limit} (language.max_position_embeddings)")

    def forward(self, tokens: Tensor, position_ids: Tensor, *, images: Tensor | None = None,
                packed_seq_params: PackedSeqParams | None = None, labels: Tensor | None = None,
                images_per_sample: list[int] | None = None, sample_ids: list[str] | None = None,
                attention_mask: Tensor | None = None, inference_context=None, checked: bool = False,
                padding_ranges: list[tuple[int, int]] | None = None, context: ContextShard | None = None) -> Tensor:
        """Per-token loss ``[1, T]`` when ``labels`` is given on the last stage, else logits
        (last stage) or hidden states (other stages). ``inference_context`` (megatron-core's
        ``StaticInferenceContext``) turns on the KV cache for generation. ``checked``: the caller
        ran ``check_pack`` on the host, so the lengths and image counts are not checked again here.
        ``padding_ranges``: [start, end) slots of a pack that hold no sample; their embeddings are
        zero (causal, per-segment attention keeps them from every real token either way).
        ``context``: this context-parallel rank's share of the pack; ``tokens``, ``position_ids`` and
        ``labels`` are the whole pack's, and the loss covers this rank's tokens, in its order."""
        if self.config.context_parallel_size > 1 and context is None:
            raise ValueError(f"this model was built for context-parallel size {self.config.context_parallel_size}: "
                             f"forward needs this rank's share of the pack (context=ContextShard.of(...)); "
                             f"generation and evaluation run at context-parallel size 1")
        if inference_context is not None and self.config.sequence_parallel:
            raise ValueError("generation runs without sequence parallelism: build the model without it")
        cu_seqlens = None if packed_seq_params is None else packed_seq_params.cu_seqlens_q
        decoder_input = None
        if self.pre_process:
            if cu_seqlens is not None and not checked:
                self.check_lengths(cu_seqlens, sample_ids)
            decoder_input = self.embed(tokens, position_ids, images, images_per_sample, sample_ids, cu_seqlens,
                                       checked, context)
            if padding_ranges:
                decoder_input = _zero_rows(decoder_input, padding_ranges, tokens.shape[-1], context)
            if self.config.sequence_parallel:
                decoder_input = tensor_parallel.scatter_to_sequence_parallel_region(decoder_input)
                # The scatter returns a view of the whole sequence; keep only this rank's slice alive.
                decoder_input = decoder_input.clone()
        if context is not None:
            tokens, position_ids = context.take(tokens), context.take(position_ids)
            labels = context.take(labels) if labels is not None else None
        if labels is not None:
            # Ignored positions carry weight 0 in the loss; megatron's cross entropy wants a valid id.
            labels = labels.clamp(min=0)
        return self.language_model(
            input_ids=tokens, position_ids=position_ids, attention_mask=attention_mask,
            decoder_input=decoder_input, labels=labels, packed_seq_params=packed_seq_params,
            inference_context=inference_context,
            # Generation needs whole-vocabulary logits on every tensor-parallel rank.
            runtime_gather_output=True if inference_context is not None else None,
        )


def _zero_rows(hidden: Tensor, ranges: list[tuple[int, int]], length: int,
               context: ContextShard | None) -> Tensor:
    """``hidden`` [S, B, H] with the rows of ``ranges`` (positions in the whole sequence of
    ``length``; this CP rank's rows of it under ``context``) zeroed, out of place (the embedding's
    output may come from a custom autograd function, which forbids in-place writes)."""
    padding = torch.zeros(length, dtype=torch.bool, device=hidden.device)
    for start, end in ranges:
        padding[start:end] = True
    if context is not None:
        padding = context.take(padding, dim=0)
    return hidden.masked_fill(padding.view(-1, 1, 1), 0)


def packed_seq_params(cu_seqlens: Tensor, max_seqlen: int, context_parallel: bool = False) -> PackedSeqParams:
    """The THD description megatron-core's attention and RoPE read. Under context parallelism the
    boundaries also go in ``cu_seqlens_*_padded``, which the split, RoPE and TE's THD CP follow.
    They are the padded boundaries in both places: a sample's padding sits at its end, where causal
    attention keeps it from every real token, and TE then has no padding between sequences to
    infer (its ``pad_between_seqs`` detection misses padding at the tail of a pack, TE #3331)."""
    cu = cu_seqlens.to(torch.int32)
    padded = cu if context_parallel else None
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=padded,
                           cu_seqlens_kv_padded=padded, max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)

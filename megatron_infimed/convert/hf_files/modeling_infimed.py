"""InfiMed for transformers: SigLIP vision → image-token reduction → Linear-GELU-Linear → Qwen3.

Exported by megatron-infimed's ``infimed-convert export-hf``; it composes transformers' own
``SiglipVisionModel`` and ``Qwen3Model`` so their attention backends, caches and ``generate()``
apply unchanged. Only the glue is here, and it mirrors the Megatron model exactly:

1. ``pixel_values`` [K, 3, H, W] (SigLIP-normalised) → patch features [K, grid², C] (after post-LN);
2. reduction to ``image_seq_length`` tokens per image (pool / pixel_shuffle / none);
3. the projector maps them to the text width; they replace, in order, the embeddings of the
   positions holding ``image_token_id`` (the prompt carries ``image_seq_length`` of them per image).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen3Model, SiglipVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_infimed import InfiMedConfig


def reduce_image_tokens(patches: torch.Tensor, reduction: dict, grid: int) -> torch.Tensor:
    """[K, grid², C] → [K, tokens, C'] (the same arithmetic as megatron_infimed.model.token_reduction)."""
    kind = reduction["kind"]
    if kind == "none":
        return patches
    n, _, channels = patches.shape
    square = patches.transpose(1, 2).reshape(n, channels, grid, grid)
    if kind == "pool":
        return F.adaptive_avg_pool2d(square, reduction["pooled_grid"]).flatten(2).transpose(1, 2)
    if kind == "pixel_shuffle":
        return F.pixel_unshuffle(square, reduction["shuffle_factor"]).flatten(2).transpose(1, 2)
    raise ValueError(f"unknown image-token reduction {kind!r}; expected 'pool', 'pixel_shuffle' or 'none'")


class InfiMedProjector(nn.Module):
    def __init__(self, config: InfiMedConfig):
        super().__init__()
        vision = config.vision_config.hidden_size
        if config.reduction["kind"] == "pixel_shuffle":
            width = vision * config.reduction["shuffle_factor"] ** 2
        else:
            width = vision
        self.linear_1 = nn.Linear(width, config.projector_hidden_size, bias=True)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class InfiMedPreTrainedModel(PreTrainedModel):
    config: InfiMedConfig
    config_class = InfiMedConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3DecoderLayer", "SiglipEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True


class InfiMedModel(InfiMedPreTrainedModel):
    def __init__(self, config: InfiMedConfig):
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.multi_modal_projector = InfiMedProjector(config)
        self.language_model = Qwen3Model(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[K, 3, H, W] → [K, image_seq_length, text hidden]."""
        vision = self.config.vision_config
        dtype = self.vision_tower.embeddings.patch_embedding.weight.dtype
        patches = self.vision_tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        reduced = reduce_image_tokens(patches, self.config.reduction, vision.image_size // vision.patch_size)
        return self.multi_modal_projector(reduced)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("images need input_ids, to find the image-token positions")
            features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
            is_image = input_ids == self.config.image_token_id
            if int(is_image.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(f"the prompt holds {int(is_image.sum())} image tokens "
                                 f"(id {self.config.image_token_id})"
                                 f" but {features.shape[0]} image(s) need {features.shape[0] * features.shape[1]} "
                                 f"({self.config.image_seq_length} each)")
            mask = is_image.unsqueeze(-1).expand_as(inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, **kwargs)


class InfiMedForConditionalGeneration(InfiMedPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: InfiMedConfig):
        super().__init__(config)
        self.model = InfiMedModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, logits_to_keep=0, **kwargs) -> CausalLMOutputWithPast:
        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds, **kwargs)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


__all__ = ["InfiMedForConditionalGeneration", "InfiMedModel", "InfiMedPreTrainedModel"]

"""InfiMed configuration for transformers (exported by megatron-infimed's ``infimed-convert export-hf``).

A composite config: ``text_config`` is a Qwen3 config, ``vision_config`` a SigLIP vision config;
``reduction`` says how the vision patch grid becomes image tokens (``pool``: adaptive average
pooling to ``pooled_grid``²; ``pixel_shuffle``: space-to-depth by ``shuffle_factor``; ``none``),
and every image occupies ``image_seq_length`` copies of ``image_token_id`` in the prompt.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class InfiMedConfig(PreTrainedConfig):
    model_type = "infimed"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model",
                                       init_kwargs={"vision_use_head": False}),
    }
    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    reduction: dict | None = None
    projector_hidden_size: int | None = None
    image_token_id: int | None = None
    image_seq_length: int | None = None
    tie_word_embeddings: bool = True
    infimed_model_config: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.reduction is None:
            self.reduction = {"kind": "pool", "pooled_grid": 12, "shuffle_factor": 2}
        if self.projector_hidden_size is None:
            self.projector_hidden_size = self.text_config.hidden_size


__all__ = ["InfiMedConfig"]

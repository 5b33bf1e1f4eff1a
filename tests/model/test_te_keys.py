"""Checkpoints carry over between ``--transformer-impl local`` and ``te``: a local layer stores
its parameters under the names Transformer Engine's layers use (TE fuses each pre-norm into the
linear after it), and loading tolerates TE's ``_extra_state`` being absent or extra.

The TE names below are those megatron-core 0.16.1's ``get_gpt_layer_with_transformer_engine_spec``
and ``get_vit_layer_with_transformer_engine_spec`` produce (TELayerNormColumnParallelLinear for
``linear_qkv`` and ``linear_fc1``, TENorm for the QK norms), less ``_extra_state``."""

import pytest
import torch
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_infimed.checkpoint.dist import load_module_state, without_missing_extra_state
from megatron_infimed.config.presets import get_preset
from megatron_infimed.model.infimed import InfiMedModel

TE_DECODER_LAYER = {
    "self_attention.linear_qkv.layer_norm_weight", "self_attention.linear_qkv.weight",
    "self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight", "self_attention.linear_proj.weight",
    "mlp.linear_fc1.layer_norm_weight", "mlp.linear_fc1.weight", "mlp.linear_fc2.weight",
}
TE_VIT_LAYER = {
    "self_attention.linear_qkv.layer_norm_weight", "self_attention.linear_qkv.layer_norm_bias",
    "self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias",
    "self_attention.linear_proj.weight", "self_attention.linear_proj.bias",
    "mlp.linear_fc1.layer_norm_weight", "mlp.linear_fc1.layer_norm_bias", "mlp.linear_fc1.weight",
    "mlp.linear_fc1.bias", "mlp.linear_fc2.weight", "mlp.linear_fc2.bias",
}


@pytest.fixture(scope="module")
def sharded_keys(mcore_world):
    state = InfiMedModel(get_preset("tiny")).sharded_state_dict()
    return {tensor.key for tensor in state.values() if not tensor.key.endswith("_extra_state")}


def layer_keys(keys: set[str], prefix: str) -> set[str]:
    return {k.removeprefix(prefix) for k in keys if k.startswith(prefix)}


def test_local_decoder_layers_store_the_te_names(sharded_keys):
    assert layer_keys(sharded_keys, "language_model.decoder.layers.") == TE_DECODER_LAYER


def test_local_vision_layers_store_the_te_names(sharded_keys):
    assert layer_keys(sharded_keys, "vision_model.decoder.layers.") == TE_VIT_LAYER


def test_te_extra_state_missing_from_a_local_checkpoint_is_not_requested():
    request = {"model0": {"w": ShardedObject("layers.linear_qkv._extra_state", None, (1,), (0,)),
                          "k": ShardedObject("layers.kept._extra_state", None, (1,), (0,))}}
    kept = without_missing_extra_state(request, stored={"layers.kept._extra_state/shard_0_1"})
    assert list(kept["model0"]) == ["k"]


def test_loading_tolerates_only_missing_extra_state():
    module = torch.nn.Linear(2, 2)
    state = {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}
    load_module_state(module, state)
    assert torch.equal(module.weight, torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="missing \\['bias'\\]"):
        load_module_state(module, {"weight": torch.ones(2, 2)})

"""The mapping table: joins invert splits, QKV follows megatron-core's per-group layout, the table
covers every parameter of the model, and the exported modeling file reduces image tokens like ours."""

from __future__ import annotations

import importlib
import shutil
import sys

import pytest
import torch

from megatron_infimed.config.presets import get_preset
from megatron_infimed.convert import mapping


def _entry(name: str, config) -> mapping.Entry:
    return next(e for e in mapping.entries(config) if e.megatron == name)


def test_qkv_join_puts_each_query_group_before_its_key_and_value():
    config = get_preset("tiny")  # 4 heads in 2 groups, head_dim 16
    entry = _entry("language_model.decoder.layers.0.self_attention.linear_qkv.weight", config)
    q = torch.arange(64).view(64, 1).expand(64, 64).float()
    k = 100 + torch.arange(32).view(32, 1).expand(32, 64).float()
    v = 200 + torch.arange(32).view(32, 1).expand(32, 64).float()
    fused = mapping.join(entry, [q, k, v], config)[:, 0]
    # group 0: q heads 0-1 (rows 0-31), k head 0, v head 0; then group 1.
    expected = torch.cat([torch.arange(32), 100 + torch.arange(16), 200 + torch.arange(16),
                          32 + torch.arange(32), 116 + torch.arange(16), 216 + torch.arange(16)]).float()
    assert torch.equal(fused, expected)


@pytest.mark.parametrize("name", [
    "language_model.decoder.layers.1.self_attention.linear_qkv.weight",
    "language_model.decoder.layers.1.mlp.linear_fc1.weight",
    "vision_model.decoder.layers.0.self_attention.linear_qkv.weight",
    "vision_model.decoder.layers.0.self_attention.linear_qkv.bias",
])
def test_split_inverts_join(name):
    config = get_preset("tiny")
    entry = _entry(name, config)
    parts = [torch.randn(shape) for shape in entry.hf_shapes]
    fused = mapping.join(entry, parts, config)
    assert tuple(fused.shape) == mapping.megatron_shape(entry)
    assert all(torch.equal(a, b) for a, b in zip(mapping.split(entry, fused, config), parts))


def test_lm_head_row_appears_only_for_untied_embeddings():
    tied = get_preset("tiny")
    untied = tied.with_overrides({"language.tie_word_embeddings": False})
    assert not any(e.row.part == "lm_head" for e in mapping.entries(tied))
    assert [e.hf for e in mapping.entries(untied) if e.row.part == "lm_head"] == [("lm_head.weight",)]


def test_table_covers_every_parameter_of_the_model_with_its_shape(mcore_world):
    from megatron_infimed.model.infimed import InfiMedModel

    config = get_preset("tiny").with_overrides({"reduction.kind": "pixel_shuffle", "projector_hidden_size": 48})
    model = InfiMedModel(config)
    params = {name: tuple(p.shape) for name, p in model.named_parameters()}
    table = {e.megatron: mapping.megatron_shape(e) for e in mapping.entries(config)}
    assert params == table


@pytest.mark.parametrize("reduction", [{"kind": "pool", "pooled_grid": 3},
                                       {"kind": "pixel_shuffle", "shuffle_factor": 2},
                                       {"kind": "none"}])
def test_exported_modeling_file_reduces_image_tokens_like_the_megatron_model(reduction, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from megatron_infimed.convert.export_hf import HF_FILES
    from megatron_infimed.model.token_reduction import reduce_image_tokens

    package = tmp_path / "exported_infimed"
    shutil.copytree(HF_FILES, package)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    modeling = importlib.import_module("exported_infimed.modeling_infimed")
    config = get_preset("tiny").with_overrides({f"reduction.{k}": v for k, v in reduction.items()})
    patches = torch.randn(2, 64, 32)
    full = {"kind": "pool", "pooled_grid": 4, "shuffle_factor": 2, **reduction}
    assert torch.equal(modeling.reduce_image_tokens(patches, full, 8), reduce_image_tokens(patches, config))
    sys.modules.pop("exported_infimed.modeling_infimed", None)

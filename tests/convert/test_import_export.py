"""TP=1 in process: the imported Megatron model computes what transformers computes, and the export
gives back exactly the weights that went in, loadable by transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_infimed.config.presets import get_preset
from megatron_infimed.model.token_reduction import tokens_per_image

TOL = 1e-4


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def megatron_model(tp1_checkpoint):
    from megatron_infimed.checkpoint.dist import load_weights
    from megatron_infimed.checkpoint.layout import iteration_folder
    from megatron_infimed.config.presets import ModelConfig
    from megatron_infimed.model.infimed import InfiMedModel

    config = ModelConfig.from_dict(json.loads((iteration_folder(tp1_checkpoint) / "model_config.json").read_text()))
    model = InfiMedModel(config)
    load_weights(str(tp1_checkpoint), [model])
    return model.eval()


def _megatron_logits(model, tokens: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
    from megatron_infimed.model.infimed import packed_seq_params

    length = tokens.shape[1]
    params = packed_seq_params(torch.tensor([0, length]), length)
    with torch.no_grad():
        return model(tokens, torch.arange(length).unsqueeze(0), images=images, packed_seq_params=params)


@pytest.fixture(scope="module")
def image_prompt(megatron_model):
    """Text, one image's worth of image tokens, text; and one random image."""
    config = megatron_model.model_config
    generator = torch.Generator().manual_seed(5)
    text = torch.randint(0, 300, (9,), generator=generator)
    image = torch.full((tokens_per_image(config),), config.image_token_id)
    tokens = torch.cat([text[:4], image, text[4:]]).unsqueeze(0)
    pixels = torch.randn(1, 3, config.vision.image_size, config.vision.image_size, generator=generator)
    return tokens, pixels


def test_imported_config_takes_dimensions_from_checkpoints_and_image_token_from_tokenizer(megatron_model, hf_sources):
    from megatron_infimed.data.tokenizer import load_tokenizer

    config = megatron_model.model_config
    assert config.language == get_preset("tiny").language
    assert config.vision == get_preset("tiny").vision
    assert config.image_token_id == load_tokenizer(hf_sources.qwen3).image_token_id


def test_text_logits_equal_qwen3_for_causal_lm(megatron_model, hf_sources):
    tokens = torch.randint(0, 2048, (1, 23), generator=torch.Generator().manual_seed(3))
    ours = _megatron_logits(megatron_model, tokens)
    with torch.no_grad():
        theirs = hf_sources.qwen3_model(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= TOL


def test_vision_features_equal_siglip_last_hidden_state(megatron_model, hf_sources):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = megatron_model.vision_model(pixels)
        theirs = hf_sources.siglip_model(pixel_values=pixels).last_hidden_state
    assert ours.shape == theirs.shape == (2, 64, 32)
    assert (ours - theirs).abs().max().item() <= TOL


def test_round_trip_gives_back_every_source_tensor_bitwise(tp1_export, hf_sources):
    exported = _tensors(tp1_export)
    qwen3, siglip = _tensors(hf_sources.qwen3), _tensors(hf_sources.siglip)
    for name, tensor in qwen3.items():  # tied: no lm_head in either
        assert torch.equal(exported[name.replace("model.", "model.language_model.", 1)], tensor), name
    used = {k: v for k, v in siglip.items() if not k.startswith("head.")}
    for name, tensor in used.items():
        assert torch.equal(exported["model.vision_tower." + name], tensor), name
    projector = [k for k in exported if k.startswith("model.multi_modal_projector.")]
    assert len(exported) == len(qwen3) + len(used) + len(projector) and len(projector) == 4


def test_exported_projector_is_the_megatron_projector(tp1_export, megatron_model):
    exported = _tensors(tp1_export)
    assert torch.equal(exported["model.multi_modal_projector.linear_1.weight"],
                       megatron_model.projector.encoder.linear_fc1.weight)
    assert torch.equal(exported["model.multi_modal_projector.linear_2.bias"],
                       megatron_model.projector.encoder.linear_fc2.bias)


def test_export_is_sharded_with_an_index_covering_every_tensor(tp1_export):
    index = json.loads((tp1_export / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tp1_export.glob("model-*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(_tensors(tp1_export))
    assert set(index["weight_map"].values()) == set(shards)


@pytest.fixture(scope="module")
def exported_model(tp1_export):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tp1_export, trust_remote_code=True).eval()


def test_exported_model_logits_on_image_and_text_match_megatron(exported_model, megatron_model, image_prompt):
    tokens, pixels = image_prompt
    ours = _megatron_logits(megatron_model, tokens, pixels)
    with torch.no_grad():
        theirs = exported_model(input_ids=tokens, pixel_values=pixels).logits
    assert (ours - theirs).abs().max().item() <= TOL


def test_exported_model_generates_with_an_image(exported_model, megatron_model, image_prompt):
    tokens, pixels = image_prompt
    output = exported_model.generate(input_ids=tokens, pixel_values=pixels, max_new_tokens=4, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)
    assert output.shape == (1, tokens.shape[1] + 4)
    # The first answer token is the Megatron model's greedy choice.
    assert output[0, tokens.shape[1]].item() == _megatron_logits(megatron_model, tokens, pixels)[0, -1].argmax().item()


def test_exported_model_also_loads_as_auto_model_for_causal_lm(tp1_export, exported_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tp1_export, trust_remote_code=True)
    assert type(model).__name__ == "InfiMedForConditionalGeneration"
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as in the source


def test_exported_tokenizer_carries_the_training_chat_template(tp1_export):
    from transformers import AutoTokenizer

    from megatron_infimed.data.chat_template import render_conversation

    tokenizer = AutoTokenizer.from_pretrained(tp1_export, trust_remote_code=True)
    turns = [{"from": "human", "value": "<image>\nis there a fracture?"}]
    messages = [{"role": "user", "content": "<image>\nis there a fracture?"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        render_conversation(turns, add_generation_prompt=True)
    generation = json.loads((tp1_export / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_language_only_export_loads_as_plain_qwen3_without_remote_code(tp1_checkpoint, hf_sources, tmp_path):
    from transformers import Qwen3ForCausalLM

    from megatron_infimed.convert.export_hf import export_hf

    folder = export_hf(tp1_checkpoint, tmp_path / "text", language_only=True, dtype="float32", progress=False)
    assert not list(folder.glob("*.py")) and "auto_map" not in json.loads((folder / "config.json").read_text())
    model = Qwen3ForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    tokens = torch.randint(0, 2048, (1, 11), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, hf_sources.qwen3_model(tokens).logits)


def test_bfloat16_export_holds_bfloat16_tensors(tp1_checkpoint, tmp_path):
    from megatron_infimed.convert.export_hf import export_hf

    folder = export_hf(tp1_checkpoint, tmp_path / "bf16", language_only=True, dtype="bfloat16", progress=False)
    tensors = _tensors(folder)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def test_projector_given_to_import_is_taken_instead_of_a_fresh_one(hf_sources, tp1_export, tmp_path):
    from megatron_infimed.convert.dist_reader import DistCheckpointReader
    from megatron_infimed.convert.import_hf import import_hf, plan_import

    plan = plan_import(hf_sources.qwen3, hf_sources.siglip, preset="tiny", projector=tp1_export)
    # A different seed would give a different fresh projector: equality means it was read.
    checkpoint = import_hf(plan, tmp_path / "ckpt", seed=99)
    reader = DistCheckpointReader(checkpoint / "iter_0000000")
    exported = _tensors(tp1_export)
    assert torch.equal(reader.read("projector.encoder.linear_fc1.weight", None),
                       exported["model.multi_modal_projector.linear_1.weight"])
    assert torch.equal(reader.read("projector.encoder.linear_fc2.bias", None),
                       exported["model.multi_modal_projector.linear_2.bias"])


def test_megatron_checkpoints_are_read_without_going_through_dcp(tp1_checkpoint, tmp_path, monkeypatch):
    """megatron-core's records are plain contiguous tensors: every read is a direct one (the fast
    path the convert benchmark measures), none falls back to DCP's whole-record load."""
    from megatron_infimed.convert.dist_reader import DistCheckpointReader
    from megatron_infimed.convert.export_hf import export_hf

    fallbacks, reads = [], []
    monkeypatch.setattr(DistCheckpointReader, "_read_dcp", lambda self, key, *a: fallbacks.append(key))
    real_read = DistCheckpointReader.read
    monkeypatch.setattr(DistCheckpointReader, "read", lambda self, *a: reads.append(a) or real_read(self, *a))
    export_hf(tp1_checkpoint, tmp_path / "same", progress=False)  # stored dtype: row runs copied, nothing read
    assert reads == [] and fallbacks == []
    export_hf(tp1_checkpoint, tmp_path / "bf16", dtype="bfloat16", progress=False)  # converted: every tensor read
    assert len(reads) > 10 and fallbacks == []

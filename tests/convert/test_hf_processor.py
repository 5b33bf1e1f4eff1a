"""The exported folder's AutoProcessor prepares prompts and images exactly as training and
evaluation do, so a transformers user gets the model's trained behaviour."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_infimed.data.chat_template import question_prompt, render_conversation, tokenize_generation_prompt
from megatron_infimed.data.images import ImagePreprocessor
from megatron_infimed.model.token_reduction import tokens_per_image


@pytest.fixture(scope="module")
def processor(tp1_export):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tp1_export, trust_remote_code=True)


def _config(tp1_checkpoint):
    from megatron_infimed.checkpoint.layout import iteration_folder
    from megatron_infimed.config.presets import ModelConfig

    return ModelConfig.from_dict(json.loads((iteration_folder(tp1_checkpoint) / "model_config.json").read_text()))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (30, 52, 3), dtype=np.uint8), mode="RGB")
    deep = Image.fromarray(rng.integers(0, 4000, (41, 29), dtype=np.uint16))  # 16-bit greyscale (I;16)
    grey = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L")
    return [wide, deep, grey]


def test_auto_processor_is_the_exported_infimed_processor(processor, tp1_checkpoint):
    config = _config(tp1_checkpoint)
    assert type(processor).__name__ == "InfiMedProcessor"
    assert processor.image_seq_length == tokens_per_image(config)
    assert processor.image_token_id == config.image_token_id


def test_prompt_ids_equal_the_evaluation_prompt(processor, tp1_checkpoint):
    from megatron_infimed.data.tokenizer import load_tokenizer

    config = _config(tp1_checkpoint)
    ours = load_tokenizer(tp1_checkpoint / "iter_0000000" / "tokenizer" / "tokenizer.json")
    turns = question_prompt("is there a fracture?", num_images=1)
    messages = [{"role": "user", "content": turns[0]["value"]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == render_conversation(turns, add_generation_prompt=True)
    inputs = processor(text=text, images=_images()[0])
    expected = tokenize_generation_prompt(turns, ours, tokens_per_image(config))
    assert inputs["input_ids"][0].tolist() == list(expected)
    assert inputs["attention_mask"].all()


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_pixel_values_equal_the_training_loader_pixels(processor, tp1_checkpoint, mode):
    config = _config(tp1_checkpoint)
    twin = type(processor)(processor.tokenizer, processor.image_size, processor.image_mean, processor.image_std,
                           processor.image_seq_length, resize_mode=mode)
    loader = ImagePreprocessor.for_vision(config.vision, mode)
    images = _images()
    got = twin(text="<image>" * len(images), images=images)["pixel_values"]
    expected = torch.stack([loader.normalize(loader.decode(_png(image))) for image in images])
    assert got.shape == (3, 3, config.vision.image_size, config.vision.image_size)
    assert torch.equal(got, expected)


def test_a_placeholder_count_unlike_the_image_count_is_refused(processor):
    with pytest.raises(ValueError, match=r"holds 2 <image> placeholder\(s\) but 1 image\(s\)"):
        processor(text="<image> and <image>", images=_images()[0])
    with pytest.raises(ValueError, match="already holds '<|image_pad|>'"):
        processor(text="<|image_pad|>", images=None)


def test_processor_inputs_give_the_megatron_models_logits(processor, tp1_checkpoint, tp1_export):
    from transformers import AutoModelForImageTextToText

    from megatron_infimed.checkpoint.dist import load_weights
    from megatron_infimed.model.infimed import InfiMedModel, packed_seq_params

    model = AutoModelForImageTextToText.from_pretrained(tp1_export, trust_remote_code=True).eval()
    megatron = InfiMedModel(_config(tp1_checkpoint))
    load_weights(str(tp1_checkpoint), [megatron])
    text = render_conversation(question_prompt("what organ is shown?", 1), add_generation_prompt=True)
    inputs = processor(text=text, images=_images()[0])
    ids = inputs["input_ids"]
    with torch.no_grad():
        theirs = model(**inputs).logits
        ours = megatron.eval()(ids, torch.arange(ids.shape[1]).unsqueeze(0), images=inputs["pixel_values"],
                                packed_seq_params=packed_seq_params(torch.tensor([0, ids.shape[1]]), ids.shape[1]))
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_evaluation_of_an_exported_folder_answers_as_the_megatron_checkpoint(tp1_checkpoint, tp1_export, tmp_path,
                                                                           monkeypatch):
    """``infimed-evaluate --model EXPORTED`` (transformers + the AutoProcessor) and ``--model CKPT``
    (megatron-core, our own prompt and image code) give the same greedy answers. The random tiny
    model's tokens decode to little text, so both sides decode to token ids here."""
    from transformers import PreTrainedTokenizerBase

    from megatron_infimed.data import tokenizer as ours
    from megatron_infimed.eval.generation import load_answer_fn
    from megatron_infimed.eval.questions import Question

    as_ids = lambda self, ids, **kwargs: " ".join(str(int(i)) for i in ids)  # noqa: E731
    monkeypatch.setattr(PreTrainedTokenizerBase, "decode", as_ids)
    for backend in (ours.HFTokenizer, ours.SentencePieceTokenizer):
        monkeypatch.setattr(backend, "decode", as_ids)

    image = tmp_path / "scan.png"
    _images()[0].save(image)
    questions = [Question(id="q1", question="is there a fracture?", answer="yes", type="closed", image=image),
                 Question(id="q2", question="which side?", answer="left", type="open")]
    hf = load_answer_fn(str(tp1_export), max_new_tokens=4)(questions)
    megatron = load_answer_fn(str(tp1_checkpoint), max_new_tokens=4)(questions)
    assert hf == megatron and all(len(answer.split()) == 4 for answer in hf)

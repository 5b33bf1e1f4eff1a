"""A run trained with a SentencePiece tokenizer exports a tokenizer.json that AutoTokenizer loads
and that encodes exactly as SentencePiece did in training."""

from __future__ import annotations

import random
import warnings

import pytest

from megatron_infimed.convert.hf_tokenizer import convert, probes
from megatron_infimed.data.chat_template import question_prompt, render_conversation
from megatron_infimed.data.tokenizer import load_tokenizer, train_sentencepiece

WORDS = ("the chest x ray shows a fracture of the left rib no effusion is seen 12 mm nodule "
         "Pneumothorax? größer 肺 résumé CT MRI").split()


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_model(request, tmp_path_factory):
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(300)]
    return train_sentencepiece(corpus, tmp_path_factory.mktemp(request.param) / "sp", vocab_size=320,
                               model_type=request.param)


def test_the_conversion_encodes_every_probe_as_sentencepiece(sp_model):
    tokenizer, different = convert(sp_model)
    assert different == []
    ours = load_tokenizer(sp_model)
    text = "<|im_start|>user\n<image>\nIs there a 12 mm nodule? 🙂<|im_end|>\n"
    assert tokenizer.encode(text).ids == ours.encode(text)
    assert tokenizer.decode(ours.encode("größer 肺 rib"), skip_special_tokens=False) == "größer 肺 rib"


def test_a_conversion_that_disagrees_is_caught(sp_model, monkeypatch):
    import megatron_infimed.convert.hf_tokenizer as module

    real = module._build

    def broken(sp):
        tokenizer = real(sp)
        tokenizer.normalizer = None  # spaces no longer become ▁: most probes now differ
        return tokenizer

    monkeypatch.setattr(module, "_build", broken)
    assert len(module.convert(sp_model)[1]) > 10


def test_probes_cover_every_piece_and_the_chat_template(sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    texts = probes([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    assert "<|im_end|>" in texts and any(t.startswith("<|im_start|>user\n<image>\n") for t in texts)
    assert len(texts) > sp.get_piece_size()


def test_exported_sentencepiece_tokenizer_loads_with_auto_tokenizer(sp_model, tmp_path):
    from transformers import AutoTokenizer

    from megatron_infimed.convert.export_hf import _converted_tokenizer, _write_tokenizer

    source = tmp_path / "tokenizer"
    source.mkdir()
    (source / sp_model.name).write_bytes(sp_model.read_bytes())
    target = tmp_path / "export"
    target.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a disagreeing conversion would warn
        _write_tokenizer(source, target, _converted_tokenizer(source))
    hf = AutoTokenizer.from_pretrained(target)
    ours = load_tokenizer(sp_model)
    turns = question_prompt("is there a fracture of the left rib?", 1)
    text = hf.apply_chat_template([{"role": "user", "content": turns[0]["value"]}], tokenize=False,
                                  add_generation_prompt=True)
    assert text == render_conversation(turns, add_generation_prompt=True)
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert hf.convert_tokens_to_ids("<|image_pad|>") == ours.image_token_id

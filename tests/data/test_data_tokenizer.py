"""Tokenizer backends: SentencePiece trained here and a tokenizers BPE built here."""

import pytest
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers, trainers

from megatron_infimed.config.presets import get_preset
from megatron_infimed.data.tokenizer import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    HFTokenizer,
    SentencePieceTokenizer,
    align_model_config,
    load_tokenizer,
)

TEXTS = ["Is there a nodule in the left lung?", "  two  spaces\nand a newline\n", "CT 123 mm, é 日本 ✓",
         f"{IM_START}user\nhello{IM_END}\n"]


def test_load_tokenizer_picks_sentencepiece_for_model_files(sp_tokenizer):
    assert isinstance(sp_tokenizer, SentencePieceTokenizer)


def test_load_tokenizer_picks_hf_backend_for_tokenizer_json_and_its_folder(bpe_tokenizer, tmp_path):
    assert isinstance(bpe_tokenizer, HFTokenizer)
    folder = load_tokenizer(bpe_tokenizer.path.rsplit("/", 1)[0])
    assert isinstance(folder, HFTokenizer)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_round_trips_text(sp_tokenizer, text):
    assert sp_tokenizer.decode(sp_tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_hf_bpe_round_trips_text(bpe_tokenizer, text):
    assert bpe_tokenizer.decode(bpe_tokenizer.encode(text)) == text


@pytest.mark.parametrize("backend", ["sp_tokenizer", "bpe_tokenizer"])
@pytest.mark.parametrize("token", [IM_START, IM_END, "<|endoftext|>", IMAGE_PAD])
def test_special_tokens_encode_to_one_id(request, backend, token):
    tok = request.getfixturevalue(backend)
    assert tok.encode(token) == [tok.token_to_id(token)]
    assert tok.encode(f"ab{token}cd").count(tok.token_to_id(token)) == 1


@pytest.mark.parametrize("backend", ["sp_tokenizer", "bpe_tokenizer"])
def test_properties_name_the_special_token_ids(request, backend):
    tok = request.getfixturevalue(backend)
    assert tok.image_token_id == tok.token_to_id(IMAGE_PAD)
    assert tok.pad_id == tok.token_to_id("<|endoftext|>")
    assert tok.eos_id == tok.token_to_id(IM_END)
    assert len({tok.image_token_id, tok.pad_id, tok.eos_id, tok.im_start_id}) == 4
    assert 0 < tok.vocab_size <= 2048


def test_unknown_token_is_none_not_unk(sp_tokenizer):
    assert sp_tokenizer.token_to_id("<|not_a_token|>") is None


def test_tokenizer_without_chat_tokens_is_refused(tmp_path):
    path = tmp_path / "plain.json"
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["a b c"], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(path))
    with pytest.raises(ValueError, match=r"lacks special token\(s\).*im_start"):
        load_tokenizer(path)


def test_unknown_tokenizer_file_type_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\n")
    with pytest.raises(ValueError, match="cannot tell the tokenizer backend"):
        load_tokenizer(path)


def test_align_model_config_takes_image_token_id_from_tokenizer(sp_tokenizer):
    config = align_model_config(get_preset("tiny"), sp_tokenizer)
    assert config.image_token_id == sp_tokenizer.image_token_id != get_preset("tiny").image_token_id


def test_align_model_config_refuses_vocab_larger_than_embedding(sp_tokenizer):
    small = get_preset("tiny").with_overrides({"language.vocab_size": sp_tokenizer.vocab_size - 1})
    with pytest.raises(ValueError, match=f"language.vocab_size={sp_tokenizer.vocab_size - 1}"):
        align_model_config(small, sp_tokenizer)

"""Fixtures for the data-loading tests: a SentencePiece tokenizer trained here and the tiny preset
aligned to it. Shard-building helpers live in ``shard_builder.py`` (imported by the tests)."""

from __future__ import annotations

import random

import pytest
from shard_builder import WORDS
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, pre_tokenizers, trainers

from megatron_infimed.config.presets import get_preset
from megatron_infimed.data.tokenizer import SPECIAL_TOKENS, align_model_config, load_tokenizer, train_sentencepiece


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(300)]
    path = train_sentencepiece(corpus, tmp_path_factory.mktemp("sp") / "tok", vocab_size=600)
    return load_tokenizer(path)


@pytest.fixture(scope="session")
def tiny_config(sp_tokenizer):
    return align_model_config(get_preset("tiny"), sp_tokenizer)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rng = random.Random(1)
    tok.train_from_iterator([" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return load_tokenizer(path)

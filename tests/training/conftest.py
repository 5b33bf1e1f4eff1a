"""Fixtures for training tests: a small prepared dataset with a SentencePiece tokenizer."""

import random

import pytest
from shard_builder import WORDS, make_sample, write_dataset

from megatron_infimed.data.tokenizer import train_sentencepiece


@pytest.fixture(scope="session")
def shard_dataset(tmp_path_factory):
    """(dataset folder, tokenizer .model path): 48 samples in 3 uneven shards."""
    root = tmp_path_factory.mktemp("shards")
    samples = [make_sample(f"s{i:03d}", num_images=i % 3 % 2, answer_words=3 + i % 7, question_words=4 + i % 5,
                           seed=i) for i in range(48)]
    write_dataset(root / "medical", samples, [20, 12, 16])
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(300)]
    tokenizer = train_sentencepiece(corpus, root / "tok", vocab_size=600)
    return root / "medical", tokenizer

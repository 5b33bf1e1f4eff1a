#!/usr/bin/env python
"""Train a SentencePiece tokenizer with the chat special tokens on text files and/or prepared datasets.

    python tools/train_tokenizer.py --dataset out/vqa_rad --text extra.txt --out tokenizer/sp --vocab-size 2000

Writes ``OUT.model`` (and ``OUT.vocab``); load it with ``load_tokenizer`` and copy its image token
id into the model with ``align_model_config``. The vocabulary must not exceed the model's
``language.vocab_size`` (2048 for the tiny preset).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.data.streaming import DatasetIndex, read_shard
from megatron_infimed.data.tokenizer import load_tokenizer, train_sentencepiece


def dataset_texts(root: str) -> Iterator[str]:
    """Every conversation turn of a prepared dataset, ``<image>`` placeholders removed."""
    for shard in DatasetIndex.from_dir(root).shards:
        for entry in read_shard(shard.path, 0, shard.samples, retries=0):
            if entry.members and "json" in entry.members:
                for turn in json.loads(entry.members["json"]).get("conversations", []):
                    yield turn.get("value", "").replace(IMAGE_PLACEHOLDER, "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", action="append", default=[], help="a UTF-8 text file, one document per line")
    parser.add_argument("--dataset", action="append", default=[], help="a prepared dataset folder (manifest.json)")
    parser.add_argument("--out", required=True, help="output prefix; writes OUT.model and OUT.vocab")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    args = parser.parse_args(argv)
    texts = [line for path in args.text for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    texts += [t for root in args.dataset for t in dataset_texts(root) if t]
    if not texts:
        parser.error("no training text: give --text and/or --dataset")
    model = train_sentencepiece(texts, args.out, args.vocab_size, args.model_type)
    tokenizer = load_tokenizer(model)
    print(f"wrote {model}: {tokenizer.vocab_size} pieces from {len(texts)} texts; "
          f"image_token_id={tokenizer.image_token_id} pad_id={tokenizer.pad_id} eos_id={tokenizer.eos_id}")


if __name__ == "__main__":
    main()

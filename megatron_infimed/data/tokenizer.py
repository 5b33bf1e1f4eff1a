"""Tokenizers: one small interface, two backends, chosen by the file you hand over.

| file              | backend                      | typical source                        |
|-------------------|------------------------------|---------------------------------------|
| ``*.model``       | SentencePiece                | ``tools/train_tokenizer.py`` (demo)   |
| ``tokenizer.json``| Hugging Face ``tokenizers``  | Qwen3 checkpoints                     |

Both must know the chat-template special tokens as *single* ids::

    <|im_start|>  <|im_end|>  <|endoftext|> (pad and end of text)  <|image_pad|> (one image position)

``<image>`` is the placeholder written in conversations; the chat template splits text at it and
inserts ``tokens_per_image(config)`` copies of ``<|image_pad|>``, so a backend never has to encode
``<image>`` itself (Qwen3's vocabulary has no such token; our SentencePiece models do).

The model's ``image_token_id`` comes from the tokenizer, never the other way round:
``align_model_config(model_config, tokenizer)`` copies ``tokenizer.image_token_id`` into the config
and checks that the id and the vocabulary fit the model's embedding table (tiny: 2048 rows).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
IMAGE_PAD = "<|image_pad|>"
# Order matters for SentencePiece training: user-defined symbols take the first ids after <unk>.
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, IMAGE_PAD, IMAGE_PLACEHOLDER)
REQUIRED_SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, IMAGE_PAD)


class Tokenizer(ABC):
    """Text ↔ ids without implicit BOS/EOS; special tokens in text are encoded as single ids."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        missing = [t for t in REQUIRED_SPECIAL_TOKENS if self.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer {self.path} lacks special token(s) {missing}; expected all of "
                             f"{list(REQUIRED_SPECIAL_TOKENS)} as single tokens")

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def image_token_id(self) -> int:
        return self.token_to_id(IMAGE_PAD)  # type: ignore[return-value]

    @property
    def pad_id(self) -> int:
        return self.token_to_id(END_OF_TEXT)  # type: ignore[return-value]

    @property
    def eos_id(self) -> int:
        """Generation stops at the end of the assistant turn."""
        return self.token_to_id(IM_END)  # type: ignore[return-value]

    @property
    def im_start_id(self) -> int:
        return self.token_to_id(IM_START)  # type: ignore[return-value]


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str | os.PathLike) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        super().__init__(path)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        # SentencePiece answers <unk>'s id for unknown pieces.
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else int(i)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())


class HFTokenizer(Tokenizer):
    def __init__(self, path: str | os.PathLike) -> None:
        from tokenizers import Tokenizer as _HF

        self._tok = _HF.from_file(str(path))
        super().__init__(path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))


def tokenizer_file(folder: str | os.PathLike) -> Path:
    """The tokenizer file of a folder: ``tokenizer.json`` if present, else its one ``*.model``."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    models = sorted(folder.glob("*.model"))
    if len(models) != 1:
        raise FileNotFoundError(f"no tokenizer in {folder}: expected tokenizer.json or one SentencePiece "
                                f"*.model (found {[m.name for m in models]})")
    return models[0]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A ``.model`` file → SentencePiece; ``tokenizer.json`` → ``tokenizers``; a folder → its
    ``tokenizer_file``."""
    p = Path(path)
    if p.is_dir():
        p = tokenizer_file(p)
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file {p} does not exist (expected a SentencePiece .model or a "
                                f"tokenizer.json, or a folder holding one)")
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    if p.suffix == ".json":
        return HFTokenizer(p)
    raise ValueError(f"cannot tell the tokenizer backend of {p}: expected a '.model' (SentencePiece) or "
                     f"'.json' (Hugging Face tokenizers) file")


def align_model_config(config: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """``config`` with ``image_token_id`` taken from the tokenizer; refuses a vocabulary that does not fit."""
    if tokenizer.vocab_size > config.language.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but model "
                         f"'{config.name}' has language.vocab_size={config.language.vocab_size}")
    return replace(config, image_token_id=tokenizer.image_token_id)


def train_sentencepiece(corpus_texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int,
                        model_type: str = "bpe") -> Path:
    """Train a SentencePiece model on ``corpus_texts`` and return the ``.model`` path.

    The chat special tokens and ``"\\n"`` are user-defined symbols (always one id each; the template
    relies on ``\\n`` after the role). Byte fallback makes every string round-trip; normalisation is
    the identity and no dummy prefix is added, so encoding pieces separately and concatenating
    equals encoding them joined at special-token boundaries.
    """
    import sentencepiece as spm

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus_texts)), model_prefix=str(out_prefix), vocab_size=vocab_size,
        model_type=model_type, user_defined_symbols=list(SPECIAL_TOKENS) + ["\n"], byte_fallback=True,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, character_coverage=1.0,
        split_digits=True, hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    return out_prefix.with_suffix(".model")

"""A SentencePiece model (ours, from ``data.tokenizer.train_sentencepiece``) as a Hugging Face
``tokenizer.json``, so an exported folder loads with ``AutoTokenizer`` and ``AutoProcessor``.

Our SentencePiece models have an identity normaliser, no dummy prefix, byte fallback and the
chat special tokens plus ``"\\n"`` as user-defined symbols. In ``tokenizers`` terms:

| SentencePiece                    | tokenizers                                                  |
|----------------------------------|-------------------------------------------------------------|
| spaces become ``▁``              | normalizer ``Replace(" ", "▁")``                             |
| BPE pieces ranked by score       | ``BPE`` with the merges that build each piece, in piece order |
| unigram pieces with scores       | ``Unigram`` with the same scores                             |
| byte fallback ``<0xNN>``         | ``byte_fallback=True``; decoder ``ByteFallback`` + ``Fuse``    |
| user-defined symbols             | added tokens (the chat tokens special, ``"\\n"`` not)          |

The conversion is only trusted after it is checked: ``convert`` encodes a probe set (every piece,
random runs of pieces and characters, rendered conversations) both ways and refuses on the first
difference, so an export never carries a tokenizer that disagrees with training.
"""

from __future__ import annotations

import random
from pathlib import Path

from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.data.tokenizer import SPECIAL_TOKENS

WORD_BOUNDARY = "\u2581"  # ▁


def hf_tokenizer(model_path: str | Path):
    """The ``tokenizers.Tokenizer`` equivalent of the SentencePiece model at ``model_path``."""
    import sentencepiece as spm

    return _build(spm.SentencePieceProcessor(model_file=str(model_path)))


def _build(sp):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    user_defined = [t for t in (*SPECIAL_TOKENS, "\n") if t in vocab]
    kind = _model_kind(sp, pieces)
    if kind == "bpe":
        plain = {i for i in range(len(pieces)) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))
                 and pieces[i] not in user_defined}
        merges = sorted((vocab[p], vocab[p[:k]], vocab[p[k:]], p[:k], p[k:])
                        for p in (pieces[i] for i in plain) for k in range(1, len(p))
                        if p[:k] in vocab and p[k:] in vocab)
        model = models.BPE(vocab=vocab, merges=[(left, right) for *_, left, right in merges],
                           unk_token=pieces[sp.unk_id()], byte_fallback=True, fuse_unk=True)
    else:
        model = models.Unigram([(p, sp.get_score(i)) for i, p in enumerate(pieces)], unk_id=sp.unk_id(),
                               byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", WORD_BOUNDARY)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(WORD_BOUNDARY, " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in user_defined if t != "\n"])
    if "\n" in user_defined:
        tokenizer.add_tokens([AddedToken("\n", normalized=False)])
    return tokenizer


def _model_kind(sp, pieces: list[str]) -> str:
    """'bpe' or 'unigram'. A BPE model scores each piece by its merge rank (0, -1, -2, ...), a
    unigram model by a log probability; the probes in ``convert`` catch a wrong reading."""
    scores = [sp.get_score(i) for i in range(len(pieces))
              if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    return "bpe" if all(float(score).is_integer() for score in scores) else "unigram"


def probes(pieces: list[str], seed: int = 0, count: int = 400) -> list[str]:
    """Strings to compare the two tokenizers on: every piece, random runs of pieces, characters
    and bytes outside the vocabulary, and conversations in the chat template."""
    from megatron_infimed.data.chat_template import render_conversation

    rng = random.Random(seed)
    # Byte pieces and <unk> are not text; the byte range is covered by the odd characters below.
    words = [p.replace(WORD_BOUNDARY, " ") for p in pieces
             if not (p.startswith("<0x") and p.endswith(">")) and p != "<unk>"]
    odd = ["ñ", "ü", "肺", "🙂", "\t", "  ", "ß", "é", "0", "12.5", "?!", "\u00a0"]
    out = list(words)
    for _ in range(count):
        run = [rng.choice(words + odd) for _ in range(rng.randint(1, 12))]
        out.append(("" if rng.random() < 0.5 else " ").join(run))
    for _ in range(20):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        turns = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
                 {"from": "gpt", "value": rng.choice(words)}]
        out.append(render_conversation(turns))
    return out


def convert(model_path: str | Path) -> tuple[object, list[str]]:
    """(the tokenizers.Tokenizer, the probe strings it encodes differently from SentencePiece)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tokenizer = _build(sp)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    different = [text for text in probes(pieces) if list(sp.encode(text)) != tokenizer.encode(text).ids]
    return tokenizer, different

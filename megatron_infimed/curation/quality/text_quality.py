"""Text quality rules: valid UTF-8, length bounds, degenerate repetition, truncation, markup, garbling.

| issue          | test                                                                  | score |
|----------------|-----------------------------------------------------------------------|-------|
| invalid_utf8   | a turn holds bytes that were not UTF-8 (lone surrogates after decode) | 0.0   |
| empty_turn     | an assistant turn is blank                                             | 0.0   |
| too_long       | conversation longer than ``max_chars``                                 | 0.2   |
| repetition     | >``max_repeat_ratio`` repeated word 3-grams (12+ words), a word 6x in a row, or a 10-char run | 0.1 |
| garbled        | mojibake (``Ã©``, ``â€™``, U+FFFD) or < 70 % ordinary characters      | 0.1   |
| markup         | HTML tags/entities, chat-template tokens, ``[INST]``, ``{{ }}``        | 0.3   |
| truncated      | an answer of 8+ words ending in a comma, colon or a dangling "the/and/of..." | 0.4 |
"""

from __future__ import annotations

import re

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import DimensionScore, penalties_to_score
from megatron_infimed.curation.record import Record
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER

_MARKUP = re.compile(
    r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|&(?:nbsp|amp|lt|gt|quot|#\d+);|\[/?INST\]|<\|[a-z_]+\|>|\{\{|\}\}"
)
_MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]|â€|\ufffd")
_CHAR_RUN = re.compile(r"(\S)\1{9,}")
_WORD_RUN = re.compile(r"\b(\w+)(?:\W+\1\b){5,}", re.IGNORECASE)
_DANGLING = frozenset("the a an and or of with to in on for is are was were at by from as that which".split())
_ORDINARY = re.compile(r"[\w\s.,;:!?'\"()\[\]/%+\-–°<>=*#&@]")


def _has_invalid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _repetitive(text: str, max_repeat_ratio: float) -> bool:
    if _CHAR_RUN.search(text) or _WORD_RUN.search(text):
        return True
    words = re.findall(r"\w+", text.lower())
    if len(words) < 12:
        return False
    trigrams = list(zip(words, words[1:], words[2:]))
    return 1 - len(set(trigrams)) / len(trigrams) > max_repeat_ratio


def _truncated(answer: str) -> bool:
    """An 8+ word answer that stops mid-sentence: "... lesion in the left lobe of the" -> True."""
    words = answer.split()
    if len(words) < 8:
        return False
    last = answer.rstrip()
    if last.endswith((",", ":", ";", "-", "(")):
        return True
    return not last.endswith((".", "!", "?", ")", '"')) and words[-1].lower().strip("\"'") in _DANGLING


class TextQualityScorer:
    def __init__(self, min_chars: int = 1, max_chars: int = 20000, max_repeat_ratio: float = 0.5):
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.max_repeat_ratio = max_repeat_ratio

    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore:
        penalties: dict[str, float] = {}
        turns = [t["value"].replace(IMAGE_PLACEHOLDER, "").strip() for t in record.conversations]
        text = "\n".join(turns)
        if _has_invalid_utf8(text):
            return DimensionScore(0.0, ("invalid_utf8",))
        answers = [v for t, v in zip(record.conversations, turns) if t["from"] == "gpt"]
        if any(len(a) < self.min_chars for a in answers):
            penalties["empty_turn"] = 0.0
        if len(text) > self.max_chars:
            penalties["too_long"] = 0.2
        if _repetitive(text, self.max_repeat_ratio):
            penalties["repetition"] = 0.1
        ordinary = len(_ORDINARY.findall(text)) / max(len(text), 1)
        if _MOJIBAKE.search(text) or ordinary < 0.7:
            penalties["garbled"] = 0.1
        if _MARKUP.search(text):
            penalties["markup"] = 0.3
        if any(_truncated(a) for a in answers):
            penalties["truncated"] = 0.4
        return penalties_to_score(penalties)

"""Medical relevance: weighted clinical terms in the whole conversation (placeholders removed).

Vocabulary (``vocabulary.py``): ~6,700 ICD-10-CM words that are not general English, curated anatomy,
organ systems, modalities and radiology words, and clinical endings (-itis, -oma, -ectomy, ...). A term
weighs 1.0, or 0.5 when everyday photo captions use it too ("hand", "chest", "plane").

| text          | score                                                      |
|---------------|------------------------------------------------------------|
| <= 40 words   | min(1, weighted hits / 2): 0 -> 0.0, 0.5 -> 0.25, 1 -> 0.5 |
| > 40 words    | min(1, (weighted hits / words) / ``min_density``)          |

With the default threshold 0.5 a short text is medical when it names one clinical term ("what is
present? -> endocrine") or two everyday body words ("which part of the body is this? -> chest"); one
everyday word alone is not ("is the man's head covered?"). Why one term suffices: a real VQA turn is a
few words and often carries exactly one, while an everyday caption carries none once general English
is filtered out (VQA-RAD: 0.9 % dropped; COCO captions: 99 % dropped; docs/curation.md).
"""

from __future__ import annotations

import re

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import DimensionScore
from megatron_infimed.curation.quality.vocabulary import ClinicalVocabulary, normalise_term
from megatron_infimed.curation.record import Record, conversation_text

_WORD = re.compile(r"[a-z0-9&]+")


class TermMatcher:
    """Sums the weights of clinical terms; the longest phrase wins at each position."""

    def __init__(self, vocabulary: ClinicalVocabulary):
        self.vocabulary = vocabulary
        self.max_words = max(len(t.split()) for t in vocabulary.weights)

    def count(self, text: str) -> tuple[float, int]:
        """(weighted term hits, words). Example: "Is there a pleural effusion in the chest?" -> (2.5, 8)."""
        words = _WORD.findall(normalise_term(text))
        hits, i = 0.0, 0
        while i < len(words):
            for n in range(min(self.max_words, len(words) - i), 0, -1):
                weight = self.vocabulary.weight(" ".join(words[i:i + n]))
                if weight:
                    hits, i = hits + weight, i + n
                    break
            else:
                i += 1
        return hits, len(words)


class RelevanceScorer:
    def __init__(self, terms_file: str | None = None, long_text_words: int = 40, min_density: float = 0.05):
        self.matcher = TermMatcher(ClinicalVocabulary.load(terms_file))
        self.long_text_words = long_text_words
        self.min_density = min_density

    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore:
        hits, words = self.matcher.count(conversation_text(record.conversations))
        if words > self.long_text_words:
            value = min(1.0, hits / words / self.min_density)
        else:
            value = min(1.0, hits / 2)
        if value >= 1.0:
            return DimensionScore(1.0)
        return DimensionScore(value, ("no_clinical_terms",) if hits == 0 else ("few_clinical_terms",))

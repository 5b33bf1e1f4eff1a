"""Per-question scoring rules, MedEvalKit-compatible (the full rules with examples: docs/evaluation.md).

| type    | correct when                                                     | extra metrics            |
|---------|------------------------------------------------------------------|--------------------------|
| closed  | the prediction holds exactly one of the words yes/no, the gold's | -                        |
| open    | normalised prediction == normalised gold                         | token-set recall/prec/F1 |
| choice  | the extracted option letter (or matched option text) is the gold | -                        |

Word level, not substring: "not" is not "no", "yes and no" names both and is wrong. A SLAKE
question labelled CLOSED whose gold is not yes/no ("Which is bigger, liver or spleen?" - "Liver")
falls back to the open exact match, as MedEvalKit grades SLAKE's closed questions by exact match.

Normalisation (``normalize_answer``): lower case; apostrophes dropped; thousands separators
dropped ("1,000" -> "1000"); decimal points kept ("2.5"); every other non-alphanumeric character
separates words ("x-ray" -> "x ray"); the articles a/an/the removed. Number words are NOT mapped to
digits ("two" != "2"), as in MedEvalKit, so scores stay comparable with published ones.
A missing prediction (``None``) is wrong and scores zero on every metric.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from megatron_infimed.eval.questions import Question

_ARTICLES = frozenset({"a", "an", "the"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)*|[^\W_]+")


def answer_tokens(text: str) -> list[str]:
    """Words of ``text`` after normalisation: ``"The X-ray, 2.5 cm."`` -> ``["x", "ray", "2.5", "cm"]``."""
    text = _THOUSANDS.sub("", text.lower().replace("'", "").replace("\u2019", ""))
    return [token for token in _TOKEN.findall(text) if token not in _ARTICLES]


def normalize_answer(text: str) -> str:
    """``"The Left Lung."`` -> ``"left lung"``; two answers match exactly when these strings are equal."""
    return " ".join(answer_tokens(text))


def closed_correct(prediction: str, gold: str) -> bool:
    """Exactly one of the words yes/no appears in ``prediction`` (any number of times) and it is ``gold``.

    ``("No, there is not.", "no")`` -> True; ``("Yes and no", "yes")`` -> False; ``("not", "no")`` -> False.
    """
    said = set(answer_tokens(prediction)) & {"yes", "no"}
    return len(said) == 1 and said == {normalize_answer(gold)}


@dataclass(frozen=True, slots=True)
class TokenOverlap:
    recall: float  # |pred ∩ gold| / |gold|: how much of the gold answer the prediction says
    precision: float  # |pred ∩ gold| / |pred|: how much of the prediction is in the gold answer
    f1: float


def token_overlap(prediction: str, gold: str) -> TokenOverlap:
    """Token-SET overlap: ``("left lung", "the left lung apex")`` -> recall 2/3, precision 1, F1 0.8."""
    predicted, expected = set(answer_tokens(prediction)), set(answer_tokens(gold))
    if not predicted or not expected:
        same = float(predicted == expected)  # both empty (e.g. gold "the"): a match; else nothing overlaps
        return TokenOverlap(same, same, same)
    common = len(predicted & expected)
    recall, precision = common / len(expected), common / len(predicted)
    f1 = 2 * recall * precision / (recall + precision) if common else 0.0
    return TokenOverlap(recall, precision, f1)


# "Answer: B", "the answer is (B)", "Option B": a cue word in any case, then an UPPER-case letter.
_CUED_LETTER = re.compile(r"\b(?i:answer|option|choice)\b(?:\s+(?i:is))?\s*[:\-]?\s*\(?([A-H])\)?(?!\w)")
# A response that starts with the letter: "B", "(B)", "B.", "B) Axial", "B: Axial" (not "A lesion").
_LEADING_LETTER = re.compile(r"^\W*([A-H])(?:[.:)\]]|$)")


def extract_choice(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter a response picks, or None when it names none or several.

    Tried in order: a leading letter ("B", "(B)", "B. Axial"); a cued letter ("Answer: B", "the
    answer is (B)"); a response that is only a letter in either case ("b"); the text of exactly one
    option ("axial plane"), where an option contained in a longer matching option yields to it.
    Letters must be upper case unless they stand alone: "a mass" and "the answer is a mass" use
    the article, not option A.
    """
    stripped = prediction.strip()
    for pattern in (_LEADING_LETTER, _CUED_LETTER):
        match = pattern.search(stripped)
        if match and match.group(1) in options:
            return match.group(1)
    if len(stripped) == 1 and stripped.upper() in options:
        return stripped.upper()

    said = f" {normalize_answer(prediction)} "
    named = {letter: normalize_answer(text) for letter, text in options.items()}
    found = {letter for letter, text in named.items() if text and f" {text} " in said}
    # "liver cyst" also contains option "liver": keep only options not inside another found one.
    found = {a for a in found if not any(a != b and f" {named[a]} " in f" {named[b]} " for b in found)}
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class QuestionScore:
    correct: bool  # closed: yes/no rule; open: exact match; choice: letter matches
    overlap: TokenOverlap | None = None  # open questions only
    extracted: str | None = None  # choice questions only: the letter read from the prediction


@dataclass(frozen=True)
class Rules:
    """How a prediction is judged, one rule per kind of question: these strict rules (``STRICT``)
    or MedEvalKit's (``eval/medevalkit.py:RULES``). Each takes (prediction, gold)."""

    choice: Callable[[str, Mapping[str, str]], str | None]  # the option letter read from a prediction
    open: Callable[[str, str], bool]
    yes_no: Callable[[str, str], bool]  # closed questions whose gold is yes or no
    closed: Callable[[str, str], bool]  # the other closed questions
    is_yes_no: Callable[[str], bool]  # does a gold answer say yes or no


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


STRICT = Rules(choice=extract_choice, open=exact_match, yes_no=closed_correct, closed=exact_match,
               is_yes_no=lambda gold: normalize_answer(gold) in ("yes", "no"))


def score_with(rules: Rules, question: Question, prediction: str | None) -> QuestionScore:
    """Apply ``rules``' rule for ``question.type``; ``prediction=None`` (no prediction given) is wrong."""
    if question.type == "choice":
        extracted = None if prediction is None else rules.choice(prediction, question.options)
        return QuestionScore(correct=extracted == question.answer, extracted=extracted)
    if prediction is None:
        zero = TokenOverlap(0.0, 0.0, 0.0) if question.type == "open" else None
        return QuestionScore(correct=False, overlap=zero)
    if question.type == "open":
        return QuestionScore(correct=rules.open(prediction, question.answer),
                             overlap=token_overlap(prediction, question.answer))
    closed = rules.yes_no if rules.is_yes_no(question.answer) else rules.closed
    return QuestionScore(correct=closed(prediction, question.answer))


def score_question(question: Question, prediction: str | None) -> QuestionScore:
    """``score_with`` the strict rules."""
    return score_with(STRICT, question, prediction)

"""MedEvalKit's scoring rules, reproduced as its code behaves, for numbers set next to published tables.

``infimed-eval --scoring medevalkit`` scores with these rules; the default (``scoring.py``, strict)
is stricter. Papers, InfiMed-Foundation included, report MedEvalKit's numbers
(alibaba-damo-academy/MedEvalKit, ``utils/utils.py``):

| rule      | strict (default)                          | medevalkit (this module)                          |
|-----------|-------------------------------------------|---------------------------------------------------|
| parsing   | the whole prediction                      | ``\\boxed{}`` / ``<answer>`` / last "answer:"...   |
| closed    | exactly one of the WORDS yes/no, the gold | exactly one of the SUBSTRINGS yes/no, gold in it  |
| open      | normalised exact match                    | lower-cased exact match, no stripping             |
| choice    | a letter or one option's text, else none  | a letter or an option's text, else most similar   |

So "not sure" is "no" here ("not" holds "no"), and "a nodule, yes" names both and is wrong.

Parsing (``parse_response``), in order: lower-case; if "boxed" occurs, the content of the last
``\\boxed{...}``; else if "<answer>" occurs, the ``<answer>...</answer>`` content; then for each
marker of ``MARKERS`` in turn, what follows its last occurrence.

Our reading of MedEvalKit, where its description leaves a detail open (each follows the code: its
``utils/utils.py`` and the ``extract_boxed_content`` it imports from ``mathruler.grader``):

- **boxed**: the LAST ``\\boxed{``, up to its matching brace (nested braces kept:
  ``\\boxed{\\text{yes}}`` -> ``\\text{yes}``), stripped. A prediction that says "boxed" without a
  closed ``\\boxed{...}`` parses to the string "None", capital N, which matches no gold.
- **<answer>**: every ``<answer>...</answer>`` pair, joined by a space and stripped; with no closed
  pair, or only empty ones, the text stays as it was.
- **markers** are applied one after another, each to what the previous left, with no stripping:
  "answer: left lung" parses to " left lung", which is NOT the open gold "left lung". Since
  "answer is" comes first, "final answer is" never applies (its "answer is" was cut already).
- **closed** (gold yes/no, any case): newlines and periods removed from the parsed prediction.
  A closed question whose gold is not yes/no (SLAKE's CLOSED "Liver") is exact equality of that
  string with the lower-cased gold.
- **open**: ``parse_response(prediction) == gold.lower()``; a trailing space or newline is wrong.
- **choice**, in order: (1) a first paragraph (split at blank lines) that is a bare option letter,
  else a last paragraph whose text before its first "." is one, replaces the prediction; (2) it is
  parsed, stripped, newlines removed; (3) its text before the first ".", after the last ":", is an
  option letter -> that option; (4) or exactly an option's text -> the first such option; (5) else
  the option whose text is most similar to the whole parsed prediction by ``difflib`` ratio, the
  first on a tie, so every prediction names some option. Letters are the options' own, in order.

What stays ours whatever the rules: a missing prediction is wrong; the open token-set
recall/precision/F1 (``scoring.token_overlap``); which questions are closed (``benchmarks.py``).
Not reproduced: what MedEvalKit's per-dataset scripts do before calling these rules (its VQA-RAD
script strips the response first; its SLAKE one uses the yes/no rule only for a lower-case gold);
docs/evaluation.md lists them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.scoring import QuestionScore, Rules, score_with

# Applied in this order, each to what the previous one left.
MARKERS = ("**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:", "答案:",
           "final answer", "final answer is")
_BOXED = "\\boxed{"
NO_BOXED_CONTENT = "None"  # what MedEvalKit's boxed extraction returns when there is none


def boxed_content(text: str) -> str:
    """Content of the last ``\\boxed{...}``: ``"so \\boxed{\\frac{1}{2}} "`` -> ``"\\frac{1}{2}"``; none: "None"."""
    start = text.rfind(_BOXED)
    if start == -1:
        return NO_BOXED_CONTENT
    depth = 0
    for end in range(start + len(_BOXED), len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
        if depth == -1:  # the brace that closes \boxed{
            return text[start + len(_BOXED) : end].strip()
    return NO_BOXED_CONTENT


def tagged_content(text: str, tag: str = "answer") -> str:
    """Every ``<tag>...</tag>`` content, joined by a space: ``"<answer>a</answer><answer>b</answer>"``
    -> ``"a b"``; ``text`` itself when there is no closed pair or only empty ones."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    parts = []
    start = text.find(opening)
    while start != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break
        parts.append(text[start + len(opening) : end])
        start = text.find(opening, end + len(closing))
    return " ".join(parts).strip() or text


def parse_response(prediction: str) -> str:
    """The answer MedEvalKit reads from a prediction: ``"Reasoning... The answer is: Yes."`` -> ``": yes."``."""
    text = prediction.lower()
    if "boxed" in text:
        text = boxed_content(text)
    elif "<answer>" in text:
        text = tagged_content(text)
    for marker in MARKERS:
        text = text.rpartition(marker)[2]  # what follows the last occurrence; all of it when absent
    return text


def _without_newlines_and_periods(text: str) -> str:
    return text.replace("\n", "").replace(".", "")


def closed_correct(prediction: str, gold: str) -> bool:
    """Exactly one of the SUBSTRINGS yes/no, and the gold among the parsed prediction's characters.

    ``("Not sure", "no")`` -> True ("not" holds "no"); ``("a nodule, yes", "yes")`` -> False (both).
    """
    said = _without_newlines_and_periods(parse_response(prediction))
    return (("yes" in said) != ("no" in said)) and gold.lower() in said


def closed_exact(prediction: str, gold: str) -> bool:
    """A closed question whose gold is not yes/no: ``("Liver.", "Liver")`` -> True; ``("the liver", ...)`` -> False."""
    return _without_newlines_and_periods(parse_response(prediction)) == gold.lower()


def open_correct(prediction: str, gold: str) -> bool:
    """String equality, nothing stripped: ``("Left Lung", "left lung")`` -> True; ``("left lung ", ...)`` -> False."""
    return parse_response(prediction) == gold.lower()


def _similarity(option: str, prediction: str) -> float:
    return difflib.SequenceMatcher(None, option, prediction).ratio()


def extract_choice(prediction: str, options: Mapping[str, str]) -> str:
    """The option letter MedEvalKit reads (see the module docstring); always one of ``options``.

    ``"B"`` -> B; ``"Answer: B. Sagittal"`` -> B; ``"sagittal plane"`` -> the option with that
    text; ``"I think it is sagittal"`` -> the most similar option's letter. Spacing counts:
    ``"The answer is: B"`` parses to ``": b"``, whose head is ``" b"``, not a letter, so it goes by
    similarity.
    """
    letters = {letter.lower(): letter for letter in options}
    texts = [(text.lower(), letter) for letter, text in options.items()]
    response = prediction.lower()
    paragraphs = response.split("\n\n")
    if paragraphs[0] in letters:
        response = paragraphs[0]
    elif paragraphs[-1].split(".")[0] in letters:
        response = paragraphs[-1].split(".")[0]
    response = parse_response(response).strip().replace("\n", "")
    head = response.split(".")[0].split(":")[-1]
    if head in letters:
        return letters[head]
    named = [letter for text, letter in texts if text == head]
    if named:
        return named[0]
    return max(texts, key=lambda option: _similarity(option[0], response))[1]  # max keeps the first on a tie


RULES = Rules(choice=extract_choice, open=open_correct, yes_no=closed_correct, closed=closed_exact,
              is_yes_no=lambda gold: gold.lower() in ("yes", "no"))


def score_question(question: Question, prediction: str | None) -> QuestionScore:
    """``scoring.score_with`` MedEvalKit's rules; ``prediction=None`` is wrong."""
    return score_with(RULES, question, prediction)

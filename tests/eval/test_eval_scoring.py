"""Scoring rules, one behaviour per test, expectations computed by hand."""

import pytest

from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.scoring import (
    answer_tokens,
    closed_correct,
    extract_choice,
    normalize_answer,
    score_question,
    token_overlap,
)

OPTIONS = {"A": "Axial", "B": "Sagittal plane", "C": "Coronal", "D": "Liver"}


def closed(answer):
    return Question(id="q", question="?", answer=answer, type="closed")


def open_question(answer):
    return Question(id="q", question="?", answer=answer, type="open")


def choice(answer="B", options=OPTIONS):
    return Question(id="q", question="?", answer=answer, type="choice", options=options)


# --- normalisation ------------------------------------------------------------------------------


def test_normalisation_lowercases_and_strips_punctuation_and_articles():
    assert normalize_answer("The Left Lung.") == "left lung"
    assert normalize_answer("  An  MRI, of a brain!  ") == "mri of brain"


def test_normalisation_splits_hyphenated_words_and_drops_apostrophes():
    assert answer_tokens("X-ray of Crohn's") == ["x", "ray", "of", "crohns"]


def test_normalisation_keeps_decimal_points_and_drops_thousands_separators():
    assert answer_tokens("2.5 cm, 1,000 cells") == ["2.5", "cm", "1000", "cells"]


def test_articles_are_removed_only_as_whole_words():
    assert normalize_answer("the theca") == "theca"
    assert normalize_answer("an anechoic area") == "anechoic area"


# --- closed: the yes/no rule --------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["yes", "Yes.", "YES", "Yes, there is an aneurysm.", "yes yes"])
def test_closed_prediction_with_only_yes_is_correct_for_gold_yes(prediction):
    assert closed_correct(prediction, "yes")


def test_closed_gold_is_case_insensitive():
    assert closed_correct("no", "No")


def test_closed_prediction_naming_the_other_word_is_wrong():
    assert not closed_correct("No.", "yes")


def test_not_does_not_count_as_no():
    assert not closed_correct("It is not present", "no")
    assert closed_correct("Yes, it is not normal", "yes")  # "not" is not "no": only "yes" was said


def test_prediction_with_both_yes_and_no_is_wrong():
    assert not closed_correct("yes and no", "yes")
    assert not closed_correct("No... well, yes", "no")


def test_prediction_with_neither_word_is_wrong():
    assert not closed_correct("There is an aneurysm", "yes")


def test_yes_no_inside_longer_words_do_not_count():
    # "eyes" contains "yes", "normal" contains "no": word level, not substring.
    assert not closed_correct("the eyes are normal", "yes")
    assert not closed_correct("nodule", "no")


def test_slake_closed_question_without_yes_no_gold_uses_exact_match():
    assert score_question(closed("Liver"), "the liver").correct
    assert not score_question(closed("Liver"), "spleen").correct


# --- open: exact match and token overlap --------------------------------------------------------


def test_open_exact_match_after_normalisation():
    assert score_question(open_question("Left lung"), "the left lung.").correct
    assert not score_question(open_question("Left lung"), "left lung apex").correct


def test_numbers_match_as_digits_but_number_words_are_not_converted():
    assert score_question(open_question("2"), "2").correct
    assert not score_question(open_question("2"), "two").correct
    assert not score_question(open_question("2.5"), "25").correct


def test_token_overlap_recall_precision_f1_by_hand():
    # prediction {left, lung}, gold {left, lung, apex}: 2 common -> recall 2/3, precision 2/2
    overlap = token_overlap("the left lung", "left lung apex")
    assert overlap.recall == pytest.approx(2 / 3)
    assert overlap.precision == pytest.approx(1.0)
    assert overlap.f1 == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # 0.8


def test_token_overlap_uses_sets_so_repeated_words_count_once():
    overlap = token_overlap("lung lung lung heart", "lung")
    assert (overlap.recall, overlap.precision) == (1.0, pytest.approx(1 / 2))


def test_token_overlap_with_no_common_word_is_zero():
    overlap = token_overlap("heart", "left lung")
    assert (overlap.recall, overlap.precision, overlap.f1) == (0.0, 0.0, 0.0)


def test_open_score_carries_the_token_overlap():
    score = score_question(open_question("left lung"), "left")
    assert not score.correct
    assert (score.overlap.recall, score.overlap.precision) == (0.5, 1.0)


# --- multiple choice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction", ["B", "(B)", "B.", "B) Sagittal plane", "B: Sagittal", "Answer: B", "The answer is (B).", "b"]
)
def test_choice_letter_is_extracted_from_common_forms(prediction):
    assert extract_choice(prediction, OPTIONS) == "B"


def test_choice_option_text_is_matched_when_no_letter_is_given():
    assert extract_choice("It is the sagittal plane.", OPTIONS) == "B"


def test_leading_article_a_is_not_option_a():
    assert extract_choice("A lesion in the liver", OPTIONS) == "D"
    assert extract_choice("the answer is a mass", OPTIONS) is None


def test_response_naming_two_options_extracts_nothing():
    assert extract_choice("axial or coronal", OPTIONS) is None


def test_longer_option_wins_over_an_option_it_contains():
    options = {"A": "Liver", "B": "Liver cyst", "C": "Kidney"}
    assert extract_choice("a liver cyst", options) == "B"


def test_letter_outside_the_options_is_not_extracted():
    assert extract_choice("E", OPTIONS) is None


def test_choice_score_is_correct_only_for_the_gold_letter():
    assert score_question(choice("B"), "(B) Sagittal plane").correct
    assert score_question(choice("B"), "(B) Sagittal plane").extracted == "B"
    assert not score_question(choice("C"), "B").correct


# --- missing predictions ------------------------------------------------------------------------


@pytest.mark.parametrize("question", [closed("yes"), open_question("left lung"), choice("B")])
def test_missing_prediction_is_wrong(question):
    assert not score_question(question, None).correct


def test_missing_open_prediction_scores_zero_overlap():
    overlap = score_question(open_question("left lung"), None).overlap
    assert (overlap.recall, overlap.precision, overlap.f1) == (0.0, 0.0, 0.0)

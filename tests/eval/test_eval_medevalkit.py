"""MedEvalKit's rules (``--scoring medevalkit``), one behaviour per test, with the strict rule's
answer beside it where the two differ."""

import pytest

from megatron_infimed.eval import scoring
from megatron_infimed.eval.medevalkit import (
    boxed_content,
    closed_correct,
    closed_exact,
    extract_choice,
    open_correct,
    parse_response,
    score_question,
    tagged_content,
)
from megatron_infimed.eval.questions import Question

OPTIONS = {"A": "Axial", "B": "Sagittal plane", "C": "Coronal", "D": "Liver"}

# --- parsing ------------------------------------------------------------------------------------


def test_parsing_lower_cases():
    assert parse_response("Left Lung") == "left lung"


def test_boxed_content_is_taken_from_the_last_box():
    assert parse_response("First \\boxed{No}, on reflection \\boxed{Yes}.") == "yes"


def test_boxed_content_keeps_nested_braces_and_is_stripped():
    assert boxed_content("\\boxed{ \\text{left lung} } done") == "\\text{left lung}"


def test_boxed_wins_over_answer_tags():
    assert parse_response("<answer>no</answer> \\boxed{yes}") == "yes"


def test_saying_boxed_without_a_box_parses_to_the_string_none():
    assert parse_response("The boxed region shows no lesion") == "None"
    assert parse_response("\\boxed{yes") == "None"  # never closed


def test_answer_tags_give_their_content():
    assert parse_response("<think>The heart is large.</think><answer> Yes </answer>") == "yes"


def test_several_answer_tags_are_joined_and_an_unclosed_one_keeps_the_text():
    assert tagged_content("<answer>left</answer> and <answer>lung</answer>") == "left lung"
    assert tagged_content("<answer>left lung") == "<answer>left lung"
    assert tagged_content("<answer></answer> no") == "<answer></answer> no"


def test_a_marker_keeps_what_follows_its_last_occurrence_unstripped():
    assert parse_response("Answer: yes. Checking again. Answer: no") == " no"


def test_markers_apply_in_their_order_so_answer_is_cuts_final_answer_is():
    # "answer is" (5th) applies before "final answer" (8th): " yes", not " is yes".
    assert parse_response("The final answer is yes") == " yes"
    assert parse_response("**Answer**: the answer is left lung") == " left lung"
    assert parse_response("**Answer:** left lung") == " left lung"
    assert parse_response("答案: 肝脏") == " 肝脏"


# --- closed -------------------------------------------------------------------------------------


def test_not_sure_counts_as_no():
    assert closed_correct("Not sure", "no")
    assert not scoring.closed_correct("Not sure", "no")  # strict: "not" is not the word "no"


def test_a_nodule_yes_names_both_and_is_wrong():
    assert not closed_correct("There is a nodule, yes", "yes")
    assert scoring.closed_correct("There is a nodule, yes", "yes")  # strict: only the word "yes"


def test_closed_yes_or_no_inside_another_word_counts():
    assert closed_correct("The eyes look fine", "yes")
    assert not closed_correct("Yes, it looks normal", "yes")  # "normal" holds "no": both


def test_closed_ignores_newlines_and_periods_and_reads_the_parsed_answer():
    assert closed_correct("Reasoning...\n\\boxed{No.}", "No")
    assert not closed_correct("yes, I think. Answer: no", "yes")  # parsed: " no"


def test_closed_with_neither_word_is_wrong():
    assert not closed_correct("There is an aneurysm", "yes")


def test_closed_gold_that_is_not_yes_no_is_exact_after_dropping_periods():
    assert closed_exact("Liver.", "Liver")
    assert not closed_exact("The liver", "Liver")


# --- open ---------------------------------------------------------------------------------------


def test_open_is_exact_equality_after_lower_casing():
    assert open_correct("Left Lung", "left lung")


def test_open_does_not_strip_a_trailing_space():
    assert not open_correct("left lung ", "left lung")
    assert scoring.normalize_answer("left lung ") == "left lung"  # strict strips it


def test_open_does_not_strip_what_a_marker_leaves():
    assert not open_correct("Answer: left lung", "left lung")  # parsed " left lung"
    assert open_correct("Answer:left lung", "left lung")


def test_open_does_not_drop_punctuation_or_articles():
    assert not open_correct("The left lung.", "left lung")


# --- multiple choice ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, letter", [("B", "B"), ("c", "C"), ("Answer: D", "D"), ("A. Axial", "A"),
                                                ("The answer is B. Sagittal plane", "B")])
def test_choice_by_letter(prediction, letter):
    assert extract_choice(prediction, OPTIONS) == letter


@pytest.mark.parametrize("prediction, letter", [("Coronal", "C"), ("sagittal plane", "B"),
                                                ("<answer>Liver</answer>", "D")])
def test_choice_by_option_text(prediction, letter):
    assert extract_choice(prediction, OPTIONS) == letter


def test_choice_letter_alone_in_the_first_or_last_paragraph():
    assert extract_choice("D\n\nThe liver is enlarged.", OPTIONS) == "D"
    assert extract_choice("The image is a slice.\n\nC. Coronal", OPTIONS) == "C"


def test_choice_otherwise_the_most_similar_option_by_difflib():
    assert extract_choice("probably a sagittal view", OPTIONS) == "B"
    assert extract_choice("coronnal", OPTIONS) == "C"
    assert scoring.extract_choice("probably a sagittal view", OPTIONS) is None  # strict: names no option


def test_choice_with_nothing_alike_takes_the_first_most_similar_option():
    assert extract_choice("zzz", {"A": "xx", "B": "yy"}) == "A"  # every ratio 0: the first option


# --- score_question -----------------------------------------------------------------------------


def test_score_question_applies_each_rule_by_type():
    closed = Question(id="1", question="?", answer="No", type="closed")
    slake_closed = Question(id="2", question="?", answer="Liver", type="closed")
    open_question = Question(id="3", question="?", answer="left lung", type="open")
    choice = Question(id="4", question="?", answer="B", type="choice", options=OPTIONS)
    assert score_question(closed, "Not sure").correct
    assert score_question(slake_closed, "liver.").correct
    assert not score_question(open_question, "left lung ").correct
    assert (score_question(choice, "sagittal").correct, score_question(choice, "sagittal").extracted) == (True, "B")


def test_open_token_metrics_stay_ours_under_medevalkit_rules():
    question = Question(id="3", question="?", answer="left lung", type="open")
    assert score_question(question, "Left lung apex").overlap == scoring.token_overlap("Left lung apex", "left lung")


def test_a_missing_prediction_is_wrong():
    for question in (Question(id="1", question="?", answer="no", type="closed"),
                     Question(id="4", question="?", answer="B", type="choice", options=OPTIONS)):
        assert not score_question(question, None).correct


# --- the comparison table of docs/evaluation.md -------------------------------------------------


@pytest.mark.parametrize("gold, prediction, strict, medevalkit", [
    ("no", "Not sure", False, True),
    ("yes", "There is a nodule, yes", True, False),
    ("yes", "Yes, it looks normal", True, False),
    ("yes", "The eyes look fine", False, True),
    ("yes", "Yes. Checking again. Answer: no", False, False),
    ("no", "Reasoning... \\boxed{No.}", True, True),
    ("left lung", "Left Lung", True, True),
    ("left lung", "left lung ", True, False),
    ("left lung", "Answer: left lung", False, False),
    ("left lung", "Answer:left lung", False, True),
    ("left lung", "The left lung.", True, False),
    ("B", "probably a sagittal view", False, True),
])
def test_docs_table_of_strict_and_medevalkit_verdicts(gold, prediction, strict, medevalkit):
    if gold == "B":
        question = Question(id="q", question="?", answer=gold, type="choice", options=OPTIONS)
    else:
        question = Question(id="q", question="?", answer=gold, type="closed" if gold in ("yes", "no") else "open")
    assert (scoring.score_question(question, prediction).correct, score_question(question, prediction).correct) == (
        strict, medevalkit)

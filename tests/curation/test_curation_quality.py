"""Rule scorers: each rubric line of docs/curation.md, and the YAML configuration."""

import numpy as np
import pytest

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import QualityConfig, build_scorers, decide
from megatron_infimed.curation.record import Record

SCORERS = build_scorers(QualityConfig.load())


def record(question="Is there a lesion in the liver?", answer="yes", images=1, placeholders=1, **metadata):
    conv = [{"from": "human", "value": "<image>\n" * placeholders + question}, {"from": "gpt", "value": answer}]
    return Record("r1", "test", conv, ["x.png"] * images, metadata)


def image(size=(64, 64), constant=False):
    thumb = np.full(size[::-1], 90, np.uint8) if constant else \
        np.random.default_rng(0).integers(0, 255, size[::-1]).astype(np.uint8)
    return LoadedImage("x.png", b"", "PNG", size, thumb, "png", b"")


def score(dim, rec, imgs=None):
    return SCORERS[dim].score(rec, [image()] if imgs is None else imgs)


def test_clean_sample_scores_one_on_every_dimension():
    for dim in SCORERS:
        assert score(dim, record()).score == 1.0, dim


@pytest.mark.parametrize("img, issue", [(image(constant=True), "blank"), (image((20, 20)), "too_small"),
                                        (image((400, 40)), "extreme_aspect")])
def test_image_quality_rules(img, issue):
    result = score("image_quality", record(), [img])
    assert result.score < 0.5 and issue in result.issues


@pytest.mark.parametrize("answer, issue", [
    ("The lesion is " + "very " * 8 + "large.", "repetition"),
    ("Ã©lÃ©sion in the liver", "garbled"),
    ("<div>A lesion in the liver</div>", "markup"),
    ("There is a large hypodense lesion in the right lobe of the", "truncated"),
    ("", "empty_turn"),
    ("l\udce9sion", "invalid_utf8"),
])
def test_text_quality_rules(answer, issue):
    result = score("text_quality", record(answer=answer))
    assert result.score < 0.5 and issue in result.issues


def test_short_answers_and_full_sentences_are_clean_text():
    assert score("text_quality", record(answer="no")).score == 1.0
    assert score("text_quality", record(answer="There is a large hypodense lesion in the right lobe.")).score == 1.0


def test_placeholder_count_must_match_image_count():
    assert score("image_text_consistency", record(placeholders=2)).issues == ("placeholder_mismatch",)
    assert score("image_text_consistency", record(placeholders=0)).issues == ("placeholder_mismatch",)
    assert score("image_text_consistency", record(images=2, placeholders=2)).score == 1.0


def test_answer_naming_another_modality_than_metadata_is_inconsistent():
    rec = record(question="Describe this image.", answer="Axial MRI of the chest.", modality="CT")
    assert "modality_mismatch" in score("image_text_consistency", rec).issues
    rec = record(question="Is this an MRI?", answer="No, it is a CT.", modality="CT")
    assert score("image_text_consistency", rec).score == 1.0


def test_caption_naming_another_body_region_is_inconsistent():
    rec = record(question="Describe this image.", answer="Axial CT of the brain.", organ="liver",
                 question_type="caption")
    assert "organ_mismatch" in score("image_text_consistency", rec).issues


def test_relevance_counts_clinical_terms():
    assert score("medical_relevance", record(question="What is the capital of France?", answer="Paris")).score == 0.0
    assert score("medical_relevance", record(question="Is this normal?", answer="no")).score == 0.5
    assert score("medical_relevance", record(question="Is there a pleural effusion?", answer="yes")).score == 1.0


def test_relevance_matches_hyphen_variants_and_clinical_endings():
    assert score("medical_relevance", record(question="Is this an X ray?", answer="yes")).score == 0.5
    assert score("medical_relevance", record(question="Is there appendicitis?", answer="yes")).score == 0.5


@pytest.mark.parametrize("answer, issue", [
    ("possibly", "yes_no_mismatch"),
    ("yes. Patient name: John Smith", "phi_name"),
    ("yes, call 555-123-4567", "phi_phone"),
    ("yes, MRN 4839201", "phi_record_number"),
    ("yes, scanned on 03/14/2021", "phi_date"),
])
def test_reliability_rules(answer, issue):
    result = score("answer_reliability", record(answer=answer))
    assert result.score < 0.5 and issue in result.issues


def test_multiple_choice_answer_must_be_an_option():
    q = "Which modality is this? Options: A) CT B) MRI C) X-ray"
    assert score("answer_reliability", record(question=q, answer="MRI")).score == 1.0
    assert score("answer_reliability", record(question=q, answer="B")).score == 1.0
    assert score("answer_reliability", record(question=q, answer="ultrasound")).issues == ("answer_not_in_options",)


def test_same_question_answered_differently_is_a_contradiction():
    conv = [{"from": "human", "value": "<image>\nIs there a lesion?"}, {"from": "gpt", "value": "yes"},
            {"from": "human", "value": "Is there a lesion?"}, {"from": "gpt", "value": "no"}]
    result = SCORERS["answer_reliability"].score(Record("c", "t", conv, ["x.png"], {}), [image()])
    assert result.issues == ("contradiction",)


def test_or_questions_and_requests_are_not_yes_no_questions():
    assert score("answer_reliability", record(question="Is this CT or MRI?", answer="CT")).score == 1.0
    assert score("answer_reliability", record(question="Can you name the organ?", answer="Brain")).score == 1.0


def test_decide_names_every_failing_issue_in_dimension_order():
    reasons = decide({"image_quality": 0.0, "text_quality": 0.9, "answer_reliability": 0.2},
                     {"image_quality": ["blank"], "answer_reliability": ["phi_phone"]},
                     {"image_quality": 0.5, "text_quality": 0.5, "answer_reliability": 0.5})
    assert reasons == ["image_quality/blank", "answer_reliability/phi_phone"]


def test_yaml_overrides_thresholds_and_options(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("thresholds:\n  medical_relevance: null\nimage_quality:\n  min_side: 100\n")
    config = QualityConfig.load(str(path))
    assert config.thresholds["medical_relevance"] is None and config.thresholds["text_quality"] == 0.5
    assert build_scorers(config)["image_quality"].score(record(), [image()]).issues == ("too_small",)


def test_yaml_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("treshold: {}\n")
    with pytest.raises(ValueError, match="unknown key 'treshold'"):
        QualityConfig.load(str(path))


class AlwaysHalf:
    def __init__(self, **options):
        self.options = options

    def score(self, record, images):
        from megatron_infimed.curation.quality import DimensionScore
        return DimensionScore(0.25, ("custom",))


def test_a_scorer_can_be_replaced_from_yaml(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(f"scorers:\n  text_quality: {__name__}:AlwaysHalf\n")
    scorers = build_scorers(QualityConfig.load(str(path)))
    assert scorers["text_quality"].score(record(), []).issues == ("custom",)

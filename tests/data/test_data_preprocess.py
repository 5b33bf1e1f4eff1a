"""Shard sample → Sample, and the overlong rule (truncate without splitting images, or drop)."""

import json

import pytest
from shard_builder import make_sample

from megatron_infimed.data.images import ImagePreprocessor
from megatron_infimed.data.pack import IGNORE_INDEX
from megatron_infimed.data.preprocess import BadSample, SamplePreprocessor, fit_to_length

IMAGE_TOKENS = 16


@pytest.fixture
def preprocess(sp_tokenizer):
    return SamplePreprocessor(sp_tokenizer, IMAGE_TOKENS, ImagePreprocessor(64))


def raw_of(sample: dict) -> dict:
    return {"json": json.dumps(sample["json"]).encode(), **sample["images"]}


def test_sample_carries_ids_shifted_labels_and_pixels(preprocess, sp_tokenizer):
    sample = preprocess(raw_of(make_sample("k1", num_images=2)), "k1")
    assert sample.sample_id == "k1" and sample.source == "synthetic-medical"
    assert sample.pixels.shape == (2, 3, 64, 64)
    assert int((sample.input_ids == sp_tokenizer.image_token_id).sum()) == 2 * IMAGE_TOKENS
    assert sample.num_trainable > 0 and sample.labels[-1] == IGNORE_INDEX


@pytest.mark.parametrize("damage, reason", [
    (lambda raw: raw.update(json=b"{not json"), "bad_json"),
    (lambda raw: raw.pop("json"), "missing_json"),
    (lambda raw: raw.update(png=b"garbage"), "bad_image"),
    (lambda raw: raw.pop("png"), "missing_image"),
])
def test_damaged_members_raise_bad_sample_with_a_reason(preprocess, damage, reason):
    raw = raw_of(make_sample("k2"))
    damage(raw)
    with pytest.raises(BadSample) as info:
        preprocess(raw, "k2")
    assert info.value.reason == reason and "k2" in str(info.value)


def test_placeholder_count_must_match_image_members(preprocess):
    sample = make_sample("k3", num_images=1)
    sample["json"]["conversations"][0]["value"] += " <image>"
    with pytest.raises(BadSample, match=r"2 <image> placeholders but image_members=\['png'\]"):
        preprocess(raw_of(sample), "k3")


def test_conversation_without_assistant_text_is_bad(preprocess):
    sample = make_sample("k4", num_images=0)
    sample["json"]["conversations"] = sample["json"]["conversations"][:1]
    with pytest.raises(BadSample) as info:
        preprocess(raw_of(sample), "k4")
    assert info.value.reason == "no_assistant_turn"


def test_fitting_sample_is_returned_unchanged(preprocess, sp_tokenizer):
    sample = preprocess(raw_of(make_sample("k5")), "k5")
    fitted, reason = fit_to_length(sample, sample.length, "truncate", sp_tokenizer.image_token_id, IMAGE_TOKENS)
    assert fitted is sample and reason is None


def test_truncation_that_leaves_no_trainable_token_drops_the_sample(preprocess, sp_tokenizer):
    sample = preprocess(raw_of(make_sample("k6", num_images=1, question_words=50)), "k6")
    first_trained = int((sample.labels != IGNORE_INDEX).nonzero()[0])
    fitted, reason = fit_to_length(sample, first_trained, "truncate", sp_tokenizer.image_token_id, IMAGE_TOKENS)
    assert fitted is None and reason == "no_trainable_token_after_truncation"


def test_truncation_cuts_text_and_keeps_whole_images(preprocess, sp_tokenizer):
    sample = preprocess(raw_of(make_sample("k7", num_images=1, answer_words=60)), "k7")
    limit = sample.length - 20
    fitted, reason = fit_to_length(sample, limit, "truncate", sp_tokenizer.image_token_id, IMAGE_TOKENS)
    assert reason == "truncated" and fitted.truncated
    assert fitted.length == limit and fitted.num_images == 1
    assert int((fitted.input_ids == sp_tokenizer.image_token_id).sum()) == IMAGE_TOKENS
    assert fitted.num_trainable > 0
    assert fitted.input_ids.tolist() == sample.input_ids[:limit].tolist()


def test_cut_inside_an_image_moves_back_to_the_image_start_never_splitting_it(preprocess, sp_tokenizer):
    sample = make_sample("k8", num_images=0, answer_words=30)
    sample["json"]["conversations"] += [{"from": "human", "value": "<image>\nand this?"},
                                        {"from": "gpt", "value": "also fine"}]
    sample["json"]["image_members"] = ["png"]
    sample["images"] = make_sample("x")["images"]
    processed = preprocess(raw_of(sample), "k8")
    first_image = (processed.input_ids == sp_tokenizer.image_token_id).nonzero()[0].item()
    fitted, _ = fit_to_length(processed, first_image + 3, "truncate", sp_tokenizer.image_token_id, IMAGE_TOKENS)
    assert fitted.length == first_image and fitted.num_images == 0 and fitted.num_trainable > 0


def test_images_alone_longer_than_the_limit_drop_the_sample(preprocess, sp_tokenizer):
    sample = preprocess(raw_of(make_sample("k9", num_images=2)), "k9")
    fitted, reason = fit_to_length(sample, 2 * IMAGE_TOKENS - 1, "truncate", sp_tokenizer.image_token_id,
                                   IMAGE_TOKENS)
    assert fitted is None and reason == "images_exceed_seq_length"


def test_drop_policy_drops_overlong_samples(preprocess, sp_tokenizer):
    sample = preprocess(raw_of(make_sample("k10")), "k10")
    fitted, reason = fit_to_length(sample, sample.length - 1, "drop", sp_tokenizer.image_token_id, IMAGE_TOKENS)
    assert fitted is None and reason == "overlong_dropped"

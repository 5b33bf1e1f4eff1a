"""The demo's synthetic generator: deterministic, balanced, and curation catches its injected defects
(precision and recall >= 0.9 per quality dimension and for duplicates)."""

import json

import numpy as np
import pytest
from PIL import Image

from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.quality import DIMENSIONS
from megatron_infimed.demo.synthetic import generate_synthetic
from megatron_infimed.demo.synthetic.prepare_input import SyntheticSpec, generate_llava_input

N = 300


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """Each distribution generated with 40 % defects and curated once."""
    root = tmp_path_factory.mktemp("synthetic")
    runs = {}
    for distribution in ("medical", "general", "shifted"):
        data = generate_synthetic(str(root / "src"), N, distribution, seed=1, image_size=64, defect_rate=0.4)
        domain = "general" if distribution == "general" else "medical"
        prepare(PrepareConfig(format="llava", input=data.json_path, image_root=data.image_root,
                              out=str(root / distribution), progress=False, domain=domain))
        runs[distribution] = (data, read_outcomes(str(root / distribution)))
    return runs


def precision_recall(lines, truth, flagged, prefix):
    predicted = {ln["id"] for ln in lines if flagged(ln)}
    actual = {sid for sid, label in truth.items() if label.startswith(prefix)}
    hits = len(predicted & actual)
    return hits / max(len(predicted), 1), hits / max(len(actual), 1), len(actual)


@pytest.mark.parametrize("distribution", ["medical", "general", "shifted"])
@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_each_dimension_catches_its_injected_defects(curated, distribution, dimension):
    data, lines = curated[distribution]
    if distribution == "general" and dimension == "medical_relevance":
        pytest.skip("general data is non-medical by design: no relevance defects are injected")
    precision, recall, positives = precision_recall(
        lines, data.defects, lambda ln: "scores" in ln and ln["scores"][dimension] < 0.5, dimension)
    assert positives >= 5
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


@pytest.mark.parametrize("distribution", ["medical", "general", "shifted"])
def test_dedup_catches_injected_duplicates(curated, distribution):
    data, lines = curated[distribution]
    precision, recall, positives = precision_recall(
        lines, data.defects, lambda ln: bool(ln["reasons"]) and ln["reasons"][0].startswith("duplicate"), "duplicate")
    assert positives >= 5 and precision >= 0.9 and recall >= 0.9


def test_every_clean_sample_is_kept(curated):
    for data, lines in curated.values():
        kept = {ln["id"] for ln in lines if not ln["reasons"]}
        assert kept == {ln["id"] for ln in lines} - set(data.defects)


@pytest.mark.parametrize("distribution", ["medical", "general", "shifted"])
def test_closed_questions_are_balanced_yes_no(curated, distribution):
    data, _ = curated[distribution]
    records = json.load(open(data.json_path))
    answers = [r["conversations"][1]["value"] for r in records
               if r["metadata"]["question_type"] == "closed" and not r["metadata"]["defect"]]
    assert set(answers) == {"yes", "no"} and 0.4 <= answers.count("yes") / len(answers) <= 0.6


def test_lesion_answer_matches_the_pixels(curated):
    data, _ = curated["medical"]
    for r in json.load(open(data.json_path))[:80]:
        if r["conversations"][0]["value"].endswith("Is there a lesion in this image?") and not r["metadata"]["defect"]:
            brightest = np.asarray(Image.open(f"{data.image_root}/{r['image']}")).max()
            assert (brightest > 235) == (r["conversations"][1]["value"] == "yes")


def test_same_seed_same_files_and_other_seed_differs(tmp_path):
    a = generate_synthetic(str(tmp_path / "a"), 20, "medical", seed=3, image_size=64, defect_rate=0.3)
    b = generate_synthetic(str(tmp_path / "b"), 20, "medical", seed=3, image_size=64, defect_rate=0.3)
    c = generate_synthetic(str(tmp_path / "c"), 20, "medical", seed=4, image_size=64, defect_rate=0.3)
    assert open(a.json_path).read() == open(b.json_path).read() and a.defects == b.defects
    assert open(a.json_path).read() != open(c.json_path).read()
    image = "images/medical_train/medical_train-000003.png"
    assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()


def test_shifted_images_look_different_but_ask_the_same_questions(tmp_path):
    med = generate_synthetic(str(tmp_path), 40, "medical", seed=0, image_size=64)
    shifted = generate_synthetic(str(tmp_path), 40, "shifted", seed=0, image_size=64)

    def questions(d):
        return {r["conversations"][0]["value"] for r in json.load(open(d.json_path))}

    assert questions(shifted) <= questions(med) | questions(shifted) and len(questions(shifted) & questions(med)) >= 4

    def mean(d):
        return np.mean([np.asarray(Image.open(f"{d.image_root}/{r['image']}")).mean()
                        for r in json.load(open(d.json_path))])

    assert mean(shifted) > mean(med) + 60  # inverted: dark backgrounds become bright


def test_generator_writes_ground_truth_file(tmp_path):
    data = generate_synthetic(str(tmp_path), 30, "general", seed=0, image_size=64, defect_rate=0.5)
    on_disk = json.load(open(tmp_path / "general_train.defects.json"))
    assert on_disk == data.defects and len(on_disk) == 15
    assert not any(label.startswith("medical_relevance") for label in on_disk.values())


def test_synthetic_format_generates_then_curates_as_llava(tmp_path):
    config = generate_llava_input(PrepareConfig(format="synthetic", out=str(tmp_path / "o"), progress=False),
                                  SyntheticSpec(n=24, distribution="medical", image_size=64))
    assert config.format == "llava" and config.input == str(tmp_path / "o" / "source" / "medical_train.json")
    report = prepare(config)
    assert report["total"] == 24 == report["kept"]
    sample = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert sample["source"] == "synthetic-medical" and sample["total_samples"] == 24

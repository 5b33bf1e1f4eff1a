"""Benchmark contamination guard (``--decontaminate``): copies of benchmark images are caught, other
radiographs are not, questions match after normalisation, and each action drops or flags as documented.

The threshold tests use the real VQA-RAD radiographs: distinct CT slices of one body region look
alike, which is what a perceptual hash could confuse, so they decide ``MAX_HAMMING``.
"""

import itertools
import json

import numpy as np
import pytest
from curation_factories import GOOD_QUESTIONS, llava, save, textured, write_jsonl
from PIL import Image

from megatron_infimed.cli.prepare import main
from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.decontaminate import (
    MAX_HAMMING,
    BenchmarkSpec,
    ContaminationGuard,
    image_hash,
    parse_benchmark_spec,
)
from megatron_infimed.curation.images import load_image

MAX_PIXELS = 64_000_000
COPIES = {"jpeg_q60": (1.0, 60), "half": (0.5, 90), "1.7x": (1.7, 90)}  # name -> (scale, JPEG quality)


def copy_image(src, dst, scale: float, quality: int) -> str:
    """``src`` resized by ``scale`` (bicubic) and saved as JPEG at ``quality``."""
    image = Image.open(src).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    image.save(dst, format="JPEG", quality=quality)
    return str(dst)


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def hash_file(path) -> int:
    return image_hash(load_image(str(path), max_pixels=MAX_PIXELS))


@pytest.fixture(scope="module")
def radiographs(vqa_rad_dir):
    """Every released VQA-RAD image, sorted by name."""
    return sorted((vqa_rad_dir / "images").glob("*.jpg"))


def write_benchmark(tmp_path, rows, name="bench.jsonl") -> str:
    """An evaluation JSONL (``jsonl`` benchmark): rows of (id, image path, question)."""
    return write_jsonl(tmp_path / name, [{"id": rid, "image": str(image), "question": q, "answer": "yes"}
                                         for rid, image, q in rows])


def curate(tmp_path, rows, bench, out="out", **kwargs):
    config = PrepareConfig(format="llava", input=write_jsonl(tmp_path / "train.jsonl", rows), out=str(tmp_path / out),
                           decontaminate=(BenchmarkSpec(name="jsonl", data=bench),), progress=False, **kwargs)
    return prepare(config)


# ---- the threshold, measured on real radiographs -----------------------------------------------
def test_distinct_vqa_rad_radiographs_are_far_beyond_the_threshold(radiographs):
    hashes = [hash_file(path) for path in radiographs]
    distances = [distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert len(radiographs) == 315
    # measured: 22 at least (two abdominal CT slices), 103 median
    assert min(distances) >= MAX_HAMMING + 8
    assert np.median(distances) > 90


def test_reencoded_and_resized_copies_of_radiographs_stay_within_the_threshold(radiographs, tmp_path):
    worst = 0
    for path in radiographs[::10]:  # 32 images: head, chest and abdomen, CT, MRI and plain film
        original = hash_file(path)
        for name, (scale, quality) in COPIES.items():
            copy = copy_image(path, tmp_path / f"{path.stem}_{name}.jpg", scale, quality)
            worst = max(worst, distance(original, hash_file(copy)))
    assert worst <= MAX_HAMMING - 6  # measured over all 315 images: 8 at most


# ---- the guard in a curation run ---------------------------------------------------------------
def test_copies_of_benchmark_images_are_caught_and_other_radiographs_are_not(radiographs, tmp_path):
    bench_images, others = radiographs[:40:4], radiographs[1:40:4] + radiographs[2:40:4]
    bench = write_benchmark(tmp_path, [(f"b{i}", p, "Is there a pneumothorax?") for i, p in enumerate(bench_images)])
    rows = []
    for i, path in enumerate(bench_images[:4]):
        for name, (scale, quality) in COPIES.items():
            copy = copy_image(path, tmp_path / f"copy{i}_{name}.jpg", scale, quality)
            rows.append(llava(f"copy{i}-{name}", copy, question="Is the heart enlarged?"))
    rows += [llava(f"other-{path.stem}", str(path), question="Is the heart enlarged?") for path in others]
    curate(tmp_path, rows, bench, allow_outside_image_root=True)  # the radiographs stay in shared/
    matched = {ln["id"] for ln in read_outcomes(str(tmp_path / "out")) if "contamination" in ln}
    assert matched == {f"copy{i}-{name}" for i in range(4) for name in COPIES}


def test_question_match_ignores_case_punctuation_and_whitespace(tmp_path):
    save(textured(seed=1), tmp_path / "a.png")
    bench = write_benchmark(tmp_path, [("q7", tmp_path / "a.png", "Is there a pleural effusion?")])
    guard = ContaminationGuard.load([BenchmarkSpec(name="jsonl", data=bench)], "question", max_pixels=MAX_PIXELS)
    image = load_image(str(tmp_path / "a.png"), max_pixels=MAX_PIXELS)
    asked = [{"from": "human", "value": "<image>\n  IS there a   pleural effusion"}, {"from": "gpt", "value": "no"}]
    assert guard.check(asked, [image]) == {"jsonl": {
        "match": "same_image_and_question", "action": "drop", "bench_images": ["a.png"], "bench_items": ["q7"],
        "distance": 0}}
    other = [{"from": "human", "value": "<image>\nIs there a pleural effusion on the left?"},
             {"from": "gpt", "value": "no"}]
    assert guard.check(other, [image])["jsonl"]["match"] == "same_image"


def test_benchmark_question_about_another_image_is_not_a_match(tmp_path):
    save(textured(seed=1), tmp_path / "bench.png")
    save(textured(seed=2), tmp_path / "train.png")
    bench = write_benchmark(tmp_path, [("q1", tmp_path / "bench.png", GOOD_QUESTIONS[0])])
    report = curate(tmp_path, [llava("t", "train.png", question=GOOD_QUESTIONS[0])], bench)
    assert report["kept"] == 1 and report["contamination"]["jsonl"]["same_image"] == 0
    assert report["contamination"]["jsonl"]["same_image_and_question"] == 0


@pytest.fixture
def contaminated(tmp_path):
    """Benchmark: images b0, b1 asked GOOD_QUESTIONS[0]. Training: b0 with that question (reworded
    in case), b1 with another question, and a clean image. Returns (rows, benchmark path)."""
    for i in range(3):
        save(textured(seed=10 + i), tmp_path / f"b{i}.png")
    bench = write_benchmark(tmp_path, [("q0", tmp_path / "b0.png", GOOD_QUESTIONS[0]),
                                       ("q1", tmp_path / "b1.png", GOOD_QUESTIONS[0])])
    rows = [llava("asked", "b0.png", question=GOOD_QUESTIONS[0].upper()),
            llava("same-image", "b1.png", question=GOOD_QUESTIONS[1]),
            llava("clean", "b2.png", question=GOOD_QUESTIONS[2])]
    return rows, bench


@pytest.mark.parametrize("action, reasons", [
    ("question", {"asked": ["contamination/jsonl"], "same-image": [], "clean": []}),
    ("drop", {"asked": ["contamination/jsonl"], "same-image": ["contamination/jsonl"], "clean": []}),
    ("flag", {"asked": [], "same-image": [], "clean": []}),
])
def test_action_decides_which_matches_are_dropped(tmp_path, contaminated, action, reasons):
    rows, bench = contaminated
    report = curate(tmp_path, rows, bench, decontaminate_action=action)
    outcomes = {ln["id"]: ln for ln in read_outcomes(str(tmp_path / "out"))}
    assert {rid: ln["reasons"] for rid, ln in outcomes.items()} == reasons
    # a flagged record is kept, and its outcome still says what it matched
    assert outcomes["same-image"]["contamination"]["jsonl"]["match"] == "same_image"
    assert outcomes["asked"]["contamination"]["jsonl"]["match"] == "same_image_and_question"
    assert "contamination" not in outcomes["clean"]
    dropped = sum(r == ["contamination/jsonl"] for r in reasons.values())
    assert report["dropped"] == ({"contamination/jsonl": dropped} if dropped else {})
    assert report["kept"] == 3 - dropped
    assert report["contamination"]["jsonl"]["dropped"] == dropped
    assert report["contamination"]["jsonl"]["flagged"] == 2 - dropped


def test_report_counts_each_bucket_with_examples_and_the_threshold(tmp_path, contaminated):
    rows, bench = contaminated
    curate(tmp_path, rows, bench)
    section = json.loads((tmp_path / "out" / "quality_report.json").read_text())["contamination"]["jsonl"]
    assert section["same_image_and_question"] == 1 and section["same_image"] == 1 and section["checked"] == 3
    assert section["max_hamming"] == MAX_HAMMING
    assert section["action"] == {"same_image_and_question": "drop", "same_image": "flag"}
    assert section["examples"] == {
        "same_image_and_question": [{"id": "asked", "bench_images": ["b0.png"], "bench_items": ["q0"], "distance": 0}],
        "same_image": [{"id": "same-image", "bench_images": ["b1.png"], "bench_items": ["q1"], "distance": 0}]}
    assert section["benchmark"] == {"data": bench, "items": 2, "images": 2, "unreadable_images": {},
                                    "items_without_image": 0}
    markdown = (tmp_path / "out" / "quality_report.md").read_text()
    assert f"| jsonl | 2 | 2 | 3 | 1 | 1 | 1 | 1 | {MAX_HAMMING} |" in markdown


def test_unreadable_benchmark_image_is_reported(tmp_path):
    save(textured(seed=1), tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bench = write_benchmark(tmp_path, [("q1", tmp_path / "a.png", "Is it?"), ("q2", tmp_path / "broken.png", "Is it?")])
    report = curate(tmp_path, [llava("t", "a.png")], bench)
    assert report["contamination"]["jsonl"]["benchmark"]["unreadable_images"] == {"broken.png": "load/corrupt_image"}
    assert report["contamination"]["jsonl"]["same_image"] == 1


def test_benchmark_whose_images_are_all_missing_is_refused(tmp_path):
    bench = write_benchmark(tmp_path, [("q1", tmp_path / "nowhere.png", "Is it?")])
    with pytest.raises(ValueError, match=r"none of its 1 images could be read \(first: nowhere.png: load/missing"):
        ContaminationGuard.load([BenchmarkSpec(name="jsonl", data=bench)], "question", max_pixels=MAX_PIXELS)


def test_resume_with_other_decontamination_settings_is_refused(tmp_path, contaminated):
    rows, bench = contaminated
    curate(tmp_path, rows, bench)
    with pytest.raises(ValueError, match="other settings.*decontaminate"):
        curate(tmp_path, rows, bench, decontaminate_action="drop")
    write_benchmark(tmp_path, [("q0", tmp_path / "b0.png", "Is the spleen enlarged?")])  # same path, new content
    with pytest.raises(ValueError, match="other settings.*decontaminate"):
        curate(tmp_path, rows, bench)


def test_a_run_without_the_guard_keeps_its_settings_fingerprint(tmp_path, contaminated):
    rows, _ = contaminated
    prepare(PrepareConfig(format="llava", input=write_jsonl(tmp_path / "t.jsonl", rows), out=str(tmp_path / "o"),
                          progress=False))
    run = json.loads((tmp_path / "o" / "progress" / "run.json").read_text())
    assert not any(key.startswith("decontaminate") for key in run)  # runs from before the guard still resume


# ---- command line ------------------------------------------------------------------------------
def test_cli_decontaminate_takes_bench_path_pairs(tmp_path, contaminated, capsys):
    rows, bench = contaminated
    argv = ["--format", "llava", "--input", write_jsonl(tmp_path / "t.jsonl", rows), "--out", str(tmp_path / "o"),
            "--decontaminate", f"jsonl={bench}", "--decontaminate-action", "drop", "--no-progress"]
    assert main(argv) == 0
    assert "kept 1 of 3 records (2 dropped)" in capsys.readouterr().out
    report = json.loads((tmp_path / "o" / "quality_report.json").read_text())
    assert report["dropped"] == {"contamination/jsonl": 2}


@pytest.mark.parametrize("spec, message", [
    ("vqa_rad", "benchmark spec 'vqa_rad' should be BENCH=PATH"),
    ("vqa_rad=", "benchmark spec 'vqa_rad=' should be BENCH=PATH"),
    ("coco=val.json", "benchmark spec 'coco=val.json': unknown benchmark 'coco'"),
])
def test_cli_bad_decontaminate_spec_is_an_error_naming_it(tmp_path, capsys, spec, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--format", "llava", "--input", "x.jsonl", "--out", str(tmp_path / "o"), "--decontaminate", spec])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_benchmark_file_fails_before_creating_output(tmp_path, contaminated, capsys):
    rows, _ = contaminated
    with pytest.raises(SystemExit) as exit_info:
        main(["--format", "llava", "--input", write_jsonl(tmp_path / "t.jsonl", rows), "--out", str(tmp_path / "o"),
              "--decontaminate", f"vqa_rad={tmp_path / 'nowhere.json'}"])
    assert exit_info.value.code == 2
    assert "benchmark data file for vqa_rad not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_same_benchmark_twice_is_refused():
    spec = parse_benchmark_spec("vqa_rad=a.json")
    with pytest.raises(ValueError, match=r"benchmark\(s\) \['vqa_rad'\] more than once"):
        ContaminationGuard.load([spec, spec], "question", max_pixels=MAX_PIXELS)


# ---- the real measurement ----------------------------------------------------------------------
@pytest.mark.slow  # the whole train split (~4 s)
def test_vqa_rad_train_against_its_test_split(vqa_rad_dir, tmp_path):
    """202 of the 203 test images are also train images (the release's design): the guard finds
    exactly the 1,063 train questions asked about them, by image name, and no other."""
    data = str(vqa_rad_dir / "VQA_RAD_Dataset_Public.json")
    report = prepare(PrepareConfig(format="vqa_rad", input=data, out=str(tmp_path / "o"), split="train",
                                   decontaminate=(parse_benchmark_spec(f"vqa_rad={data}"),), progress=False))
    section = report["contamination"]["vqa_rad"]
    assert (section["same_image"], section["same_image_and_question"]) == (1062, 1)
    assert report["dropped"]["contamination/vqa_rad"] == 1 and section["flagged"] == 1062
    entries = json.loads((vqa_rad_dir / "VQA_RAD_Dataset_Public.json").read_text())
    test_images = {e["image_name"] for e in entries if e["phrase_type"].startswith("test_")}
    image_of = {str(e["qid"]): e["image_name"] for e in entries}
    for line in read_outcomes(str(tmp_path / "o")):
        expected = [f"images/{image_of[line['id']]}"] if image_of[line["id"]] in test_images else None
        assert (line["contamination"]["vqa_rad"]["bench_images"] if "contamination" in line else None) == expected

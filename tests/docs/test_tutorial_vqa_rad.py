"""docs/tutorial-vqa-rad.md as written: its ```bash blocks, in order, in one shell, in a temporary
folder, with the variables the tutorial itself declares; only ITERS is set lower than its default.

A command edited in the tutorial is the command tested, so the tutorial cannot drift from the code.
The learning is not checked here (a few iterations learn nothing); the tutorial states the numbers
of a run at its own iteration count.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = REPO_ROOT / "docs" / "tutorial-vqa-rad.md"
TEST_ITERS = 10
WORKDIR = Path("runs") / "vqa-rad"  # where the tutorial's first block moves to


def tutorial_script(markdown: str) -> str:
    """The tutorial's ```bash blocks joined into one script that stops at the first failure."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)
    return "set -euo pipefail\n" + "\n".join(blocks)


def documented_iterations(markdown: str) -> int:
    match = re.search(r"ITERS=\$\{ITERS:-(\d+)\}", markdown)
    assert match, "the tutorial must declare ITERS=${ITERS:-N}"
    return int(match.group(1))


def test_the_script_runs_every_step_in_order():
    # One command per line: continuation lines joined, runs of spaces squeezed.
    script = re.sub(r" +", " ", tutorial_script(TUTORIAL.read_text()).replace("\\\n", " "))
    steps = [
        r"infimed-prepare [^\n]*--split train [^\n]*--decontaminate vqa_rad=",
        r"infimed-prepare [^\n]*--split test",
        r"tools/train_tokenizer\.py\" --dataset data/train",
        r"infimed-train --config vqa_rad\.yaml --train-iters \"\$ITERS\"",
        r"infimed-eval run --model checkpoints/vqa_rad",
        r"infimed-eval score [^\n]*--predictions eval/strict/predictions\.jsonl [^\n]*--scoring medevalkit",
        r"infimed-eval score [^\n]*--predictions eval/always_no\.jsonl",
        r"bootstrap_intervals\(\[gain\]",
    ]
    position = 0
    for step in steps:
        found = re.compile(step).search(script, position)
        assert found, f"step {step!r} missing from the tutorial's bash blocks, or out of order"
        position = found.end()


def test_the_stated_majority_baseline_is_the_test_splits(vqa_rad_dir):
    from megatron_infimed.eval.benchmarks import load_benchmark

    questions = load_benchmark("vqa_rad", str(vqa_rad_dir / "VQA_RAD_Dataset_Public.json"))
    golds = [q.answer.strip().lower() for q in questions if q.type == "closed"]
    majority = max(golds.count("yes"), golds.count("no"))
    assert (golds.count("no"), len(golds)) == (133, 251)
    text = TUTORIAL.read_text()
    assert f"{majority} of {len(golds)}" in text
    assert f"{100 * majority / len(golds):.2f} %" in text


def test_the_measured_numbers_are_for_the_documented_iteration_count():
    text = TUTORIAL.read_text()
    iterations = documented_iterations(text)
    assert f"after {iterations} iterations" in text
    assert f"(`ITERS` {iterations})" in text


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory, vqa_rad_dir):
    folder = tmp_path_factory.mktemp("tutorial")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "REPO": str(REPO_ROOT), "VQA_RAD": str(vqa_rad_dir), "ITERS": str(TEST_ITERS),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(["bash", "-c", tutorial_script(TUTORIAL.read_text())], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder / WORKDIR, result.stdout


@pytest.mark.slow
def test_the_train_split_is_checked_against_the_test_split(tutorial_run):
    workdir, _ = tutorial_run
    report = json.loads((workdir / "data" / "train" / "quality_report.json").read_text())
    guard = report["contamination"]["vqa_rad"]
    assert (guard["same_image_and_question"], guard["same_image"]) == (1, 1062)
    assert (guard["dropped"], guard["flagged"]) == (1, 1062)
    assert report["dropped"]["contamination/vqa_rad"] == 1
    assert report["total"] == 1797 == report["kept"] + sum(report["dropped"].values())


@pytest.mark.slow
def test_the_test_split_is_curated_apart(tutorial_run):
    workdir, _ = tutorial_run
    report = json.loads((workdir / "data" / "test" / "quality_report.json").read_text())
    assert report["selection"]["split"] == "test"
    assert report["total"] == 451


@pytest.mark.slow
def test_training_stops_at_the_overridden_iteration_count(tutorial_run):
    workdir, _ = tutorial_run
    assert (workdir / "tokenizer" / "vqa_rad.model").is_file()
    latest = workdir / "checkpoints" / "vqa_rad" / "latest_checkpointed_iteration.txt"
    assert int(latest.read_text()) == TEST_ITERS


@pytest.mark.slow
@pytest.mark.parametrize("scoring", ["strict", "medevalkit"])
def test_both_scorings_score_every_test_question_with_intervals(tutorial_run, scoring):
    workdir, _ = tutorial_run
    results = json.loads((workdir / "eval" / scoring / "results.json").read_text())
    assert results["scoring"] == scoring
    assert (results["n_total"], results["n_closed"], results["n_open"], results["n_skipped"]) == (451, 251, 200, 0)
    low, high = results["ci95"]["closed_accuracy"]
    assert low <= results["closed_accuracy"] <= high
    assert set(results["by_category"]["image_organ"]) == {"abdomen", "chest", "head"}
    assert (workdir / "eval" / scoring / "results.md").is_file()


@pytest.mark.slow
def test_the_majority_baseline_answers_no_to_everything(tutorial_run):
    workdir, stdout = tutorial_run
    results = json.loads((workdir / "eval" / "always_no" / "results.json").read_text())
    assert results["closed_accuracy"] == pytest.approx(133 / 251)
    assert results["open_exact_match"] == 0.0
    assert re.search(r"251 closed questions: model - always 'no' = [+-]\d+\.\d\d% \(95% interval ", stdout)

"""``infimed-eval``: flags reach the library, errors come back as exit status 2 and one message."""

import json

import pytest
from PIL import Image

from megatron_infimed.cli import evaluate


@pytest.fixture
def bench(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    lines = [
        {"id": 1, "image": "x.png", "question": "Normal?", "answer": "yes"},
        {"id": 2, "image": "x.png", "question": "Fracture?", "answer": "no"},
        {"id": 3, "image": "missing.png", "question": "Mass?", "answer": "yes"},
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_score_writes_the_three_files(bench, tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": 1, "prediction": "Yes"}\n{"id": "2", "prediction": "Yes"}\n')
    code = evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench),
                          "--predictions", str(predictions), "--output", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.jsonl", "results.json", "results.md"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # Scoring does not look at images: question 3 (image missing) is scored, as wrong without a prediction.
    assert (results["closed_accuracy"], results["n_skipped"], results["n_missing_predictions"]) == (1 / 3, 0, 1)
    assert json.loads(capsys.readouterr().out)["overall"] == 1 / 3


def test_score_error_exits_2_with_the_message(bench, tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": 99, "prediction": "yes"}\n')
    code = evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench),
                          "--predictions", str(predictions), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "line 1: id '99' is not a question of this benchmark" in capsys.readouterr().err


def test_run_passes_model_flags_to_load_answer_fn_and_honours_limit(bench, tmp_path, monkeypatch):
    calls = []

    def fake_load_answer_fn(model_path, max_new_tokens):
        calls.append((model_path, max_new_tokens))
        return lambda batch: ["yes"] * len(batch)

    monkeypatch.setattr(evaluate, "load_answer_fn", fake_load_answer_fn)
    code = evaluate.main(["run", "--model", "ckpt/iter_10", "--benchmark", "jsonl", "--data", str(bench),
                          "--output", str(tmp_path / "out"), "--batch-size", "2", "--max-new-tokens", "16",
                          "--limit", "2"])
    assert code == 0
    assert calls == [("ckpt/iter_10", 16)]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["n_total"], results["closed_accuracy"]) == (2, 0.5)


def test_run_with_a_missing_checkpoint_names_it(bench, tmp_path, capsys):
    code = evaluate.main(["run", "--model", str(tmp_path / "ckpt"), "--benchmark", "jsonl", "--data", str(bench),
                          "--output", str(tmp_path / "out")])
    assert code == 2
    assert "no checkpoint under" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_benchmark_is_rejected_by_the_parser(bench, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["score", "--benchmark", "mmmu", "--data", str(bench), "--predictions", "p",
                       "--output", str(tmp_path)])
    assert exit_info.value.code == 2


def test_score_does_not_need_the_images(bench, tmp_path):
    (tmp_path / "x.png").unlink()
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "prediction": "yes"}) + "\n" for i in (1, 2, 3)))
    assert evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench),
                          "--predictions", str(predictions), "--output", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["closed_accuracy"], results["n_closed"], results["n_skipped"]) == (2 / 3, 3, 0)


def test_a_run_scored_again_without_its_images_gives_the_same_results(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "load_answer_fn", lambda model, tokens: lambda batch: ["yes"] * len(batch))
    assert evaluate.main(["run", "--model", "ckpt", "--benchmark", "jsonl", "--data", str(bench),
                          "--output", str(tmp_path / "run")]) == 0
    (tmp_path / "x.png").unlink()
    assert evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench), "--predictions",
                          str(tmp_path / "run" / "predictions.jsonl"), "--output", str(tmp_path / "score")]) == 0
    first, again = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("run", "score"))
    assert again == first and first["skipped"] == {"image_missing": 1}


def test_empty_predictions_file_exits_2_naming_it(bench, tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("")
    code = evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench),
                          "--predictions", str(predictions), "--output", str(tmp_path / "out")])
    assert code == 2
    assert f"{predictions} holds no predictions" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def score_cli(bench, tmp_path, answers, *flags):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "prediction": a}) + "\n" for i, a in answers.items()))
    code = evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench), "--predictions", str(predictions),
                          "--output", str(tmp_path / "out"), *flags])
    assert code == 0
    return json.loads((tmp_path / "out" / "results.json").read_text()), (tmp_path / "out" / "results.md").read_text()


ANSWERS = {1: "Yes", 2: "Not sure", 3: "no"}  # golds: yes, no, yes


def test_score_is_strict_by_default(bench, tmp_path):
    results, markdown = score_cli(bench, tmp_path, ANSWERS)
    # strict: "Not sure" names neither word -> only question 1 right.
    assert (results["scoring"], results["closed_accuracy"]) == ("strict", 1 / 3)
    assert "Scoring: strict." in markdown


def test_score_with_medevalkit_scoring(bench, tmp_path):
    results, markdown = score_cli(bench, tmp_path, ANSWERS, "--scoring", "medevalkit")
    # MedEvalKit: "Not sure" holds the substring "no" -> questions 1 and 2 right.
    assert (results["scoring"], results["closed_accuracy"]) == ("medevalkit", 2 / 3)
    assert "Scoring: medevalkit." in markdown


def test_bootstrap_flags_reach_results(bench, tmp_path):
    results, _ = score_cli(bench, tmp_path, ANSWERS, "--bootstrap", "200", "--bootstrap-seed", "5")
    assert results["bootstrap"] == {"resamples": 200, "seed": 5, "level": 0.95}
    low, high = results["ci95"]["closed_accuracy"]
    assert low <= 1 / 3 <= high


def test_bootstrap_zero_omits_intervals(bench, tmp_path):
    results, _ = score_cli(bench, tmp_path, ANSWERS, "--bootstrap", "0")
    assert "ci95" not in results and results["bootstrap"]["resamples"] == 0


def test_negative_bootstrap_exits_2_naming_it(bench, tmp_path, capsys):
    code = evaluate.main(["score", "--benchmark", "jsonl", "--data", str(bench), "--predictions", "p",
                          "--output", str(tmp_path / "out"), "--bootstrap", "-1"])
    assert code == 2
    assert "bootstrap must be 0 (no intervals) or a number of resamples, got -1" in capsys.readouterr().err

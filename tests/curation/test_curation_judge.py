"""Model judge against a local OpenAI-compatible stub on 127.0.0.1 started by the test."""

import pytest
from curation_factories import llava, save, textured, write_jsonl
from judge_stub import judge_config as config

from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.judge import ModelJudge, parse_score


def test_judge_scores_each_requested_dimension(stub_server):
    judge = ModelJudge(config(stub_server(), dimensions=("text_quality", "medical_relevance")))
    results = judge.judge_many([("h1", "Is there a lesion?\nyes", []), ("h2", "What is the capital?\nParis", [])])
    assert results == [{"text_quality": 0.9, "medical_relevance": 0.9}, {"text_quality": 0.1, "medical_relevance": 0.1}]


def test_request_carries_model_and_dimension_rubric(stub_server):
    server = stub_server()
    ModelJudge(config(server, dimensions=("answer_reliability",))).judge_one("answer_reliability", "h", "text", [])
    (body,) = server.requests
    assert body["model"] == "stub-judge" and body["temperature"] == 0
    assert body["messages"][0]["role"] == "system" and "reliable and safe" in body["messages"][0]["content"]


def test_server_errors_are_retried(stub_server):
    server = stub_server(fail_first=2)
    judge = ModelJudge(config(server, retries=3))
    assert judge.judge_one("text_quality", "h", "a lesion", []) == 0.9
    assert len(server.requests) == 3 and judge.stats["retries"] == 2


def test_exhausted_retries_give_no_score_and_count_a_failure(stub_server):
    judge = ModelJudge(config(stub_server(fail_first=100), retries=1))
    assert judge.judge_one("text_quality", "h", "a lesion", []) is None
    assert judge.stats["failures"] == 1


def test_negative_retries_are_refused(stub_server):
    with pytest.raises(ValueError, match="retries must be >= 0, got -1"):
        ModelJudge(config(stub_server(), retries=-1))


def test_concurrency_is_bounded(stub_server):
    server = stub_server(delay=0.05)
    judge = ModelJudge(config(server, concurrency=2, dimensions=("text_quality",)))
    judge.judge_many([(f"h{i}", "lesion", []) for i in range(8)])
    assert len(server.requests) == 8 and server.max_active == 2


def test_cache_keyed_by_sample_hash_survives_a_new_judge(stub_server, tmp_path):
    server = stub_server()
    cache = str(tmp_path / "cache.jsonl")
    ModelJudge(config(server, cache_path=cache)).judge_one("text_quality", "same-hash", "lesion", [])
    again = ModelJudge(config(server, cache_path=cache))
    assert again.judge_one("text_quality", "same-hash", "a different text", []) == 0.9
    assert len(server.requests) == 1 and again.stats["cache_hits"] == 1


def test_parse_score_accepts_json_or_a_bare_number_and_rejects_out_of_range():
    assert parse_score('{"score": 0.25, "reason": "ok"}') == 0.25
    assert parse_score("Score: 0.7") == 0.7
    with pytest.raises(Exception, match="outside"):
        parse_score('{"score": 4}')


def judged_run(tmp_path, server):
    save(textured(seed=1), tmp_path / "a.png")
    save(textured(seed=2), tmp_path / "b.png")
    rows = [llava("med", "a.png"), llava("plain", "b.png", question="Is the heart enlarged?", answer="no")]
    return prepare(PrepareConfig(format="llava", input=write_jsonl(tmp_path / "d.jsonl", rows), out=str(tmp_path / "o"),
                                 progress=False, judge=config(server, dimensions=("text_quality",))))


def test_judge_lowers_scores_in_the_pipeline_and_is_reported(stub_server, tmp_path):
    report = judged_run(tmp_path, stub_server())
    outcomes = {ln["id"]: ln for ln in read_outcomes(str(tmp_path / "o"))}
    assert outcomes["med"]["reasons"] == [] and outcomes["med"]["scores"]["text_quality"] == 0.9
    assert outcomes["plain"]["reasons"] == ["text_quality/judge_low"]
    assert report["judge"]["requests"] == 2 and report["dropped"] == {"text_quality/judge_low": 1}


def test_a_judged_run_resumes_without_asking_again(stub_server, tmp_path):
    server = stub_server()
    first = judged_run(tmp_path, server)
    again = judged_run(tmp_path, server)
    assert (again["kept"], again["dropped"]) == (first["kept"], first["dropped"])
    assert again["judge"]["requests"] == 0 and len(server.requests) == 2

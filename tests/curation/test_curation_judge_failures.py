"""A judge that redirects or fails: the key and the sample go only to the configured endpoint, no
score comes from anywhere else, and a run in which every judge call failed says so."""

import pytest
from curation_factories import llava, save, textured, write_jsonl
from judge_stub import judge_config

from megatron_infimed.cli.prepare import main
from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.judge import ModelJudge

KEY_ENV = "INFIMED_TEST_JUDGE_KEY"


@pytest.fixture
def redirecting(stub_server, monkeypatch):
    """(a judge that answers every POST with 302, the server on another port it points to)."""
    monkeypatch.setenv(KEY_ENV, "sk-secret")
    elsewhere = stub_server()
    return stub_server(redirect_to=elsewhere.url + "/chat/completions"), elsewhere


def two_records(tmp_path) -> str:
    save(textured(seed=1), tmp_path / "a.png")
    save(textured(seed=2), tmp_path / "b.png")
    rows = [llava("med", "a.png"), llava("plain", "b.png", question="Is the heart enlarged?", answer="no")]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def run(tmp_path, server, **judge):
    config = judge_config(server, dimensions=("text_quality",), retries=0, **judge)
    return prepare(PrepareConfig(format="llava", input=two_records(tmp_path), out=str(tmp_path / "o"),
                                 progress=False, judge=config))


def cli(tmp_path, server, *flags):
    return main(["--format", "llava", "--input", two_records(tmp_path), "--out", str(tmp_path / "o"),
                 "--no-progress", "--judge-url", server.url, "--judge-model", "stub-judge",
                 "--judge-dimensions", "text_quality", "--judge-retries", "0", *flags])


def test_redirect_is_not_followed_so_the_key_never_reaches_another_origin(redirecting):
    judge_server, elsewhere = redirecting
    ModelJudge(judge_config(judge_server, api_key_env=KEY_ENV)).judge_one("text_quality", "h", "a lesion", [])
    assert judge_server.seen[0][1]["Authorization"] == "Bearer sk-secret"  # there was a key to leak
    assert elsewhere.seen == []


def test_redirect_is_a_failure_naming_status_and_location(redirecting):
    judge_server, elsewhere = redirecting
    judge = ModelJudge(judge_config(judge_server, api_key_env=KEY_ENV))
    assert judge.judge_one("text_quality", "h", "a lesion", []) is None
    assert judge.stats["failures"] == 1
    assert "302" in judge.first_error and elsewhere.url + "/chat/completions" in judge.first_error


def test_redirect_is_not_retried(redirecting):
    judge_server, _ = redirecting
    ModelJudge(judge_config(judge_server, api_key_env=KEY_ENV, retries=3)).judge_one("text_quality", "h", "x", [])
    assert len(judge_server.requests) == 1


def test_redirected_samples_keep_their_rule_scores_in_a_run(tmp_path, redirecting):
    run(tmp_path, redirecting[0], api_key_env=KEY_ENV)
    outcomes = {line["id"]: line for line in read_outcomes(str(tmp_path / "o"))}
    assert [outcomes[i]["reasons"] for i in ("med", "plain")] == [[], []]
    assert outcomes["med"]["score_sources"] == {dim: "rule" for dim in outcomes["med"]["scores"]}


def test_every_failed_judge_call_is_counted_in_the_report(tmp_path, stub_server):
    judge = run(tmp_path, stub_server(fail_first=1000))["judge"]
    assert (judge["calls"], judge["failures"], judge["all_failed"]) == (2, 2, True)
    assert "503" in judge["first_error"]


def test_report_markdown_flags_a_run_whose_every_judge_call_failed(tmp_path, stub_server):
    run(tmp_path, stub_server(fail_first=1000))
    assert "**Every judge call failed" in (tmp_path / "o" / "quality_report.md").read_text()


def test_samples_whose_judge_call_failed_are_marked_in_their_outcome(tmp_path, stub_server):
    run(tmp_path, stub_server(fail_first=1000))
    assert [line["judge_failed"] for line in read_outcomes(str(tmp_path / "o"))] == [["text_quality"]] * 2


def test_a_run_whose_every_judge_call_failed_warns_on_stderr(tmp_path, stub_server, capsys):
    run(tmp_path, stub_server(fail_first=1000))
    err = capsys.readouterr().err
    assert "every model-judge call failed (2 of 2)" in err and "503" in err


def test_judge_failures_are_still_reported_after_a_resumed_run(tmp_path, stub_server):
    server = stub_server(fail_first=1000)
    run(tmp_path, server)
    judge = run(tmp_path, server)["judge"]  # resumes a finished run: nothing is asked again
    assert (judge["requests"], judge["failures"], judge["all_failed"]) == (0, 2, True)


def test_a_partly_failing_judge_is_counted_but_not_all_failed(tmp_path, stub_server, capsys):
    judge = run(tmp_path, stub_server(fail_first=1))["judge"]
    assert (judge["calls"], judge["failures"], judge["all_failed"]) == (2, 1, False)
    assert "model-judge" not in capsys.readouterr().err


def test_cli_exits_2_when_every_judge_call_fails(tmp_path, stub_server, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(tmp_path, stub_server(fail_first=1000))
    assert exit_info.value.code == 2
    assert "--judge-optional" in capsys.readouterr().err.splitlines()[-1]


def test_cli_judge_optional_accepts_rule_scores_when_every_judge_call_fails(tmp_path, stub_server, capsys):
    assert cli(tmp_path, stub_server(fail_first=1000), "--judge-optional") == 0
    assert "kept 2 of 2 records" in capsys.readouterr().out

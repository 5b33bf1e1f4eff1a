"""Model judge against a local OpenAI-compatible stub on 127.0.0.1 started by the test."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.judge import JudgeConfig, ModelJudge, parse_score
from curation_factories import llava, save, textured, write_jsonl


class StubJudge(ThreadingHTTPServer):
    """Scores 0.9 when the conversation mentions "lesion", else 0.1; can fail the first requests."""

    daemon_threads = True

    def __init__(self, fail_first=0, delay=0.0):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.fail_first, self.delay = fail_first, delay
        self.requests, self.active, self.max_active = [], 0, 0
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class StubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(body)
            server.active += 1
            server.max_active = max(server.max_active, server.active)
            failing = len(server.requests) <= server.fail_first
        time.sleep(server.delay)
        with server.lock:
            server.active -= 1
        if self.path != "/v1/chat/completions" or failing:
            self.send_response(503 if failing else 404)
            self.end_headers()
            return
        score = 0.9 if "lesion" in body["messages"][1]["content"] else 0.1
        reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps({"score": score})}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_server():
    servers = []

    def start(**kwargs):
        server = StubJudge(**kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        threading.Timer(30, server.shutdown).start()  # bounded: stops itself even if a test hangs
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def config(server, **kwargs):
    return JudgeConfig(base_url=server.url, model="stub-judge", retry_delay_s=0.01, timeout_s=5, **kwargs)


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


def test_judge_lowers_scores_in_the_pipeline_and_is_reported(stub_server, tmp_path):
    server = stub_server()
    save(textured(seed=1), tmp_path / "a.png")
    save(textured(seed=2), tmp_path / "b.png")
    rows = [llava("med", "a.png"), llava("plain", "b.png", question="Is the heart enlarged?", answer="no")]
    report = prepare(PrepareConfig(format="llava", input=write_jsonl(tmp_path / "d.jsonl", rows), out=str(tmp_path / "o"),
                                   progress=False, judge=config(server, dimensions=("text_quality",))))
    outcomes = {ln["id"]: ln for ln in read_outcomes(str(tmp_path / "o"))}
    assert outcomes["med"]["reasons"] == [] and outcomes["med"]["scores"]["text_quality"] == 0.9
    assert outcomes["plain"]["reasons"] == ["text_quality/judge_low"]
    assert report["judge"]["requests"] == 2 and report["dropped"] == {"text_quality/judge_low": 1}

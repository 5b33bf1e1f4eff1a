"""A local OpenAI-compatible judge on 127.0.0.1 for the judge tests (see conftest.stub_server)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_infimed.curation.judge import JudgeConfig


class StubJudge(ThreadingHTTPServer):
    """Scores 0.9 when the conversation mentions "lesion", else 0.1; can fail the first requests,
    or answer every POST with a 302 to ``redirect_to``. ``seen`` records (method, headers) of
    every request, so a test can tell what reached this origin."""

    daemon_threads = True

    def __init__(self, fail_first=0, delay=0.0, redirect_to=None):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.fail_first, self.delay, self.redirect_to = fail_first, delay, redirect_to
        self.requests, self.seen, self.active, self.max_active = [], [], 0, 0
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _score_reply(handler: BaseHTTPRequestHandler, score: float) -> None:
    reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps({"score": score})}}]}
    data = json.dumps(reply).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class StubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        # What a client that follows a 302 sends: it never carries the sample, yet would get a
        # score of 0 that drops any sample it is taken for.
        with self.server.lock:
            self.server.seen.append(("GET", dict(self.headers)))
        _score_reply(self, 0.0)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.seen.append(("POST", dict(self.headers)))
            server.requests.append(body)
            server.active += 1
            server.max_active = max(server.max_active, server.active)
            failing = len(server.requests) <= server.fail_first
        time.sleep(server.delay)
        with server.lock:
            server.active -= 1
        if server.redirect_to:
            self.send_response(302)
            self.send_header("Location", server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/v1/chat/completions" or failing:
            self.send_response(503 if failing else 404)
            self.end_headers()
            return
        _score_reply(self, 0.9 if "lesion" in body["messages"][1]["content"] else 0.1)


def judge_config(server: StubJudge, **kwargs) -> JudgeConfig:
    """A JudgeConfig for ``server`` with short retry delays and timeouts."""
    return JudgeConfig(base_url=server.url, model="stub-judge", retry_delay_s=0.01, timeout_s=5, **kwargs)

"""Fixtures shared by the curation tests."""

import threading

import pytest

from judge_stub import StubJudge


@pytest.fixture
def stub_server():
    """start(**kwargs) -> a running StubJudge on 127.0.0.1; all are shut down after the test."""
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

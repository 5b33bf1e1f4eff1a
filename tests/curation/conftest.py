"""Fixtures shared by the curation tests."""

import threading

import pytest
from judge_stub import StubJudge


@pytest.fixture
def stub_server():
    """start(**kwargs) -> a running StubJudge on 127.0.0.1; all are shut down after the test."""
    servers, watchdogs = [], []

    def start(**kwargs):
        server = StubJudge(**kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        # Bounded: stops itself even if a test hangs. A daemon, and cancelled below: a pending
        # non-daemon timer would hold the interpreter open for up to 30 s after the last test.
        watchdog = threading.Timer(30, server.shutdown)
        watchdog.daemon = True
        watchdog.start()
        watchdogs.append(watchdog)
        servers.append(server)
        return server

    yield start
    for watchdog in watchdogs:
        watchdog.cancel()
    for server in servers:
        server.shutdown()
        server.server_close()

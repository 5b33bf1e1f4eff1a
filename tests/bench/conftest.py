"""Benchmarks at tiny sizes, run in-process through ``infimed-bench``'s ``main``: the JSON object on
the last stdout line is the specification checked here (fields present, values sane), never a timing."""

import json

import pytest


@pytest.fixture
def bench_json(capsys):
    from megatron_infimed.cli.bench import main

    def run(*argv: str) -> dict:
        main([*argv, "--json"])
        lines = capsys.readouterr().out.strip().splitlines()
        return json.loads(lines[-1])

    return run

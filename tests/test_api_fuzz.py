"""Schemathesis against the real daemon, authentication on: every answer must be one /openapi.json lists.

The whole bin runs (replayed photos, the shipped model, mock pins) on a loopback port; schemathesis
(the `test` extra) reads the served document and sends what it allows and what it does not, with an
admin token. Any check it fails (an unlisted status, a body that does not match its schema, a 5xx,
accepted invalid data, auth ignored...) fails this test with schemathesis' own report.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from recyclex_edge.daemon import Daemon
from tests.conftest import API_ADMIN_TOKEN, _api_token_overrides
from tests.test_daemon import bin_config, photo_folder, run_daemon  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("st")
MAX_EXAMPLES = 30  # per operation and phase; --max-time bounds the whole run on a slow machine
MAX_TIME_S = 120


async def test_schemathesis_finds_nothing_against_the_running_bin(
    tmp_path: Path,
    run_daemon: Any,  # noqa: F811
) -> None:
    assert SCHEMATHESIS.is_file(), f"{SCHEMATHESIS} is missing: schemathesis is in the test extra"
    photos = photo_folder(tmp_path, ["glass", "metal"])
    config = bin_config(
        tmp_path,
        photos,
        "http.auth.enabled=true",
        *_api_token_overrides(),
        "http.rate_limit.enabled=false",  # the fuzzer sends far more than a bin's budget allows
    )
    daemon: Daemon = await run_daemon(config)
    base = f"http://127.0.0.1:{daemon.config.http.port}"
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(REPO / "tests" / "schemathesis.toml"),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {API_ADMIN_TOKEN}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--workers",
        "1",
        "--seed",
        "16",
        "--request-timeout",
        "30",
        "--no-color",
        # The WebSocket endpoint is not plain HTTP; its refusals are covered by tests/test_api_live.py.
        "--exclude-path",
        "/predict/live",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)},
    )
    output, _ = await asyncio.wait_for(process.communicate(), MAX_TIME_S + 120)
    report = output.decode(errors="replace")
    failures = report[report.find("FAILURES") :] if "FAILURES" in report else report
    assert process.returncode == 0, f"schemathesis found problems:\n{failures[:30000]}"
    # Warnings (operations it could only answer 404, lacking ids of recent events) are not failures.
    assert "❌" not in report, failures[:30000]

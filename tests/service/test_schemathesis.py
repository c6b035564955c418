"""schemathesis, run against the service's own OpenAPI: no 5xx, every response matches the schema."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ServerProcess

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
         "response_headers_conformance"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server: ServerProcess) -> None:
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    result = subprocess.run(
        [binary, "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--max-examples", "15",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600)
    summary = re.search(r"(\d+) generated, (\d+) (passed|found)", result.stdout)
    print(result.stdout[-3000:])  # the case count lands in the test log
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary and int(summary.group(1)) >= 200, "schemathesis generated too few cases to mean anything"

"""The README's set-up commands and curls are true: every curl runs against a real server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import REPO, ServerProcess

README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_curl_in_the_readme_works_as_written(server: ServerProcess, tmp_path: Path) -> None:
    curls = [line for line in README.splitlines() if line.startswith("curl ")]
    assert len(curls) >= 10
    paths = {m for line in curls for m in re.findall(r"127\.0\.0\.1:8000(/[\w-]+)", line)}
    assert {"/sample", "/encode", "/reconstruct", "/interpolate", "/anomaly-score", "/readyz", "/model",
            "/metrics"} <= paths
    host = server.url.removeprefix("http://")
    for line in curls:
        command = line.replace("curl ", "curl -f -S ", 1).replace("127.0.0.1:8000", host)
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{line}\n{done.stderr}"

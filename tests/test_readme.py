"""The README and docs/ say true things: the set-up commands, every curl (run against a real server),
every relative link."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, ServerProcess

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]


def text(page: Path) -> str:
    return page.read_text()


def code_lines(page: Path) -> list[str]:
    """Lines of the page's fenced code blocks."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text(page), re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines()]


def test_readme_opens_with_the_two_commands() -> None:
    first_block = text(README).split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_is_a_short_front_door() -> None:
    assert len(text(README).splitlines()) <= 150
    for doc in ("api", "anomaly", "training", "performance", "design"):
        assert f"(docs/{doc}.md)" in text(README), f"the README does not link docs/{doc}.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", text(page))
    for link in links:
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        assert (page.parent / link.split("#")[0]).exists(), f"{page.name}: broken link {link}"


def test_every_make_target_named_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = {m for page in PAGES for m in re.findall(r"`make ([\w-]+)", text(page))}
    targets |= {m for page in PAGES for line in code_lines(page) for m in re.findall(r"^make ([\w-]+)", line)}
    assert {"run", "test"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"make {target}: no such target"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_curl_works_as_written(page: Path, server: ServerProcess, tmp_path: Path) -> None:
    """Each page's curls in order, in one folder (a page's later curls use the files its earlier ones wrote)."""
    curls = [line for line in code_lines(page) if line.startswith("curl ")]
    if page == README:
        assert len(curls) >= 10
        paths = {m for line in curls for m in re.findall(r"127\.0\.0\.1:8000(/[\w-]+)", line)}
        assert {"/sample", "/encode", "/reconstruct", "/interpolate", "/anomaly-score", "/readyz", "/model",
                "/metrics"} <= paths
    host = server.url.removeprefix("http://")
    # The pages name the default model (fashion-mnist-vae); the test server serves a tiny one.
    served = httpx.get(server.url + "/model").json()["model"]["name"]
    for line in curls:
        command = (line.replace("curl ", "curl -f -S ", 1).replace("127.0.0.1:8000", host)
                   .replace("/models/fashion-mnist-vae/", f"/models/{served}/"))
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{page.name}: {line}\n{done.stderr}"

"""The README and docs/ say true things: the two set-up commands, every curl, `vaeserve score` and
Python example run against a real server; every other `vaeserve` and benchmark command they show
parses with its program's own argument parser; every relative link and make target exists."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.servers import REPO, ServerProcess
from vaeserve.cli import build_parser

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
VAESERVE = re.compile(r"^(?:\.venv/bin/)?vaeserve\s+")
PYTHON_SCRIPT = re.compile(r"^(?:\.venv/bin/)?python3?\s+((?:benchmarks|docs)/\S+\.py)(.*)$")
ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")  # VAESERVE_X=1 vaeserve serve ...


def text(page: Path) -> str:
    return page.read_text()


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text(page)) if lang == language]


def code_lines(page: Path) -> list[str]:
    """Lines of the page's fenced code blocks (any language but python)."""
    return [line for lang, body in FENCE.findall(text(page)) if lang != "python" for line in body.splitlines()]


def commands(page: Path) -> list[str]:
    """Every command the page shows: code-block lines, and inline code that starts like a command."""
    inline = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", FENCE.sub("", text(page)))]
    return [ENV_PREFIX.sub("", line.strip()) for line in code_lines(page)] + inline


def argv(command: str) -> list[str]:
    """The words of a command, without its trailing comment or optional-part brackets."""
    return shlex.split(command.replace("[", " ").replace("]", " "), comments=True)


def test_readme_opens_with_the_two_commands() -> None:
    first_block = text(README).split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_is_a_short_front_door() -> None:
    assert len(text(README).splitlines()) <= 150
    for doc in ("api", "anomaly", "training", "performance", "design"):
        assert f"(docs/{doc}.md)" in text(README), f"the README does not link docs/{doc}.md"
    scores = [line for line in code_lines(README) if "vaeserve score" in line]
    assert any("--url" in line for line in scores) and any("--artifacts" in line for line in scores)
    assert blocks(README, "python"), "the README shows the Python client"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for link in re.findall(r"\]\(([^)\s]+)\)", text(page)):
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        assert (page.parent / link.split("#")[0]).exists(), f"{page.name}: broken link {link}"


def test_every_make_target_named_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = {m for page in PAGES for command in commands(page) for m in re.findall(r"^make ([\w-]+)", command)}
    assert {"run", "test"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"make {target}: no such target"


class ParseError(Exception):
    pass


def test_every_vaeserve_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """train/evaluate/export/serve are too slow or long-running to run here; their options must exist.
    Code-block lines are whole commands; inline code may name a command without its required arguments
    (`vaeserve score`), but every option it shows must exist."""
    def error(self: argparse.ArgumentParser, message: str) -> None:
        raise ParseError(message)

    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    parser = build_parser()
    checked = 0
    for page in PAGES:
        whole = {ENV_PREFIX.sub("", line.strip()) for line in code_lines(page)}
        for command in commands(page):
            if not VAESERVE.match(command) or re.search(r"\$\(|\||\(", command):  # not synopses: `X (--a | --b)`
                continue
            checked += 1
            try:
                parser.parse_args(argv(VAESERVE.sub("", command)))
            except SystemExit as exc:  # --help
                assert exc.code == 0, f"{page.name}: `{command}`"
            except ParseError as exc:
                assert command not in whole and str(exc).startswith("the following arguments are required"), \
                    f"{page.name}: `{command}`: {exc}"
    assert checked >= 10


PARSE_ONLY = """
import argparse, runpy, shlex, sys
class Parsed(Exception):
    pass
original = argparse.ArgumentParser.parse_args
def parse_and_stop(self, args=None, namespace=None):
    original(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_and_stop
failed = []
for line in sys.stdin.read().splitlines():
    script, *args = shlex.split(line)
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
        failed.append(line + "  (ran without parsing arguments)")
    except Parsed:
        pass
    except SystemExit as exc:
        failed.append(f"{line}  (exit {exc.code})")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_command_parses() -> None:
    """Each `python benchmarks/....py ARGS` shown: its own parser accepts ARGS (nothing is run)."""
    shown = {shlex.join([m.group(1), *argv(m.group(2))])
             for page in PAGES for c in commands(page) if (m := PYTHON_SCRIPT.match(c))}
    assert len(shown) >= 5
    for line in shown:
        assert (REPO / shlex.split(line)[0]).is_file(), line
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], input="\n".join(sorted(shown)), cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def runnable(line: str) -> bool:
    return line.startswith("curl ") or bool(re.match(r"^(?:\.venv/bin/)?vaeserve score\s", line))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_example_works_as_written(page: Path, server: ServerProcess, artifacts_dir: Path, tmp_path: Path) -> None:
    """The page's curls and `vaeserve score` lines in order, in one folder (later lines use the files
    earlier ones wrote), then its Python blocks, against the tiny model's server and artifacts."""
    lines = [line for line in code_lines(page) if runnable(line)]
    if page == README:
        curls = [line for line in lines if line.startswith("curl ")]
        assert len(curls) >= 10
        paths = {m for line in curls for m in re.findall(r"127\.0\.0\.1:8000(/[\w-]+)", line)}
        assert {"/sample", "/encode", "/reconstruct", "/interpolate", "/anomaly-score", "/readyz", "/model",
                "/metrics"} <= paths
    host = server.url.removeprefix("http://")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The pages name the default model (fashion-mnist-vae); the test server serves a tiny one.
    served = httpx.get(server.url + "/model").json()["model"]["name"]
    for line in lines:
        command = (line.replace("curl ", "curl -f -S ", 1).replace("127.0.0.1:8000", host)
                   .replace("/models/fashion-mnist-vae/", f"/models/{served}/")
                   .replace("--artifacts artifacts", f"--artifacts {artifacts_dir}"))
        command = re.sub(r"^(?:\.venv/bin/)?vaeserve ", f"{sys.executable} -m vaeserve ", command)
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=env)
        assert done.returncode == 0, f"{page.name}: {line}\n{done.stderr[-2000:]}"
    for block in blocks(page, "python"):
        done = subprocess.run([sys.executable, "-c", block.replace("127.0.0.1:8000", host)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, f"{page.name}: python block\n{block}\n{done.stderr[-2000:]}"

"""Docker for the container tests: the engine's client, a local Debian base built once and tagged by a hash
of its inputs, timed image builds, and a local index that serves this machine's CPU torch wheel.

No image can be pulled here: every image starts from the local base (deploy/README.md, "Containers in CI").
Every container runs on the host's network and listens on 127.0.0.1 only; builds' RUN steps use it too.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

IMAGES = Path(__file__).parent / "images"
# The engine's own client (docker.io or docker-ce): it builds with BuildKit. A newer standalone client
# earlier on PATH may lack the buildx plugin that BuildKit needs.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
LABEL = "vaeserve.test"  # on every image and container the tests make: cleanup touches nothing else
# What python:3.11-slim-bookworm gives the Dockerfile: Python with venv and pip, CA certificates.
MMDEBSTRAP_ARGS = ["--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm"]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TORCH_VERSION = "2.13.0"  # the Dockerfile's TORCH_VERSION (tests/deploy/test_static.py ties it to pyproject)
# Fixed, because the index URL is a build argument and so part of the torch layer's cache key.
TORCH_INDEX_PORT = 38017


@dataclass
class Build:
    image: str
    seconds: float
    size_bytes: int
    steps: int = 0
    cached_steps: int = 0
    note: str = ""


@dataclass
class Figures:
    """What the container tests measured, printed at the end of the run (tests/containers/conftest.py)."""

    builds: list[Build] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


FIGURES = Figures()


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                             f"{done.stderr[-3000:]}")
    return done


def engine_problem() -> str | None:
    """None when a Docker engine answers; otherwise why not, in words."""
    if not Path(DOCKER).exists() and shutil.which(DOCKER) is None:
        return "no docker client is installed"
    try:
        done = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 20 s"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"docker version exited {done.returncode}"])[-1]
    return None


def image_size(tag: str) -> int | None:
    done = docker("image", "inspect", "--format", "{{.Size}}", tag, check=False)
    return int(done.stdout) if done.returncode == 0 else None


def build(tag: str, *, context: Path, log_dir: Path, dockerfile: Path | None = None, target: str | None = None,
          build_args: dict[str, str] | None = None) -> Build:
    """docker build with BuildKit and the host's network; timed, sized and recorded in FIGURES."""
    args = ["build", "--network", "host", "--progress", "plain", "--label", f"{LABEL}=1", "--tag", tag]
    if dockerfile is not None:
        args += ["--file", str(dockerfile)]
    if target is not None:
        args += ["--target", target]
    for name, value in (build_args or {}).items():
        args += ["--build-arg", f"{name}={value}"]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"build-{re.sub(r'[^A-Za-z0-9]+', '-', tag)}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        done = subprocess.run([DOCKER, *args, str(context)], stdout=log, stderr=subprocess.STDOUT, timeout=1800,
                              env={**os.environ, "DOCKER_BUILDKIT": "1"})
    seconds = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    if done.returncode != 0:
        raise AssertionError(f"docker build of {tag} failed after {seconds:.0f}s ({log_path}):\n{text[-4000:]}")
    steps = set(re.findall(r"^#(\d+) \[(?!internal\])[^\]]+\] ", text, re.MULTILINE))
    cached = steps & set(re.findall(r"^#(\d+) CACHED$", text, re.MULTILINE))
    size = image_size(tag)
    assert size is not None, f"{tag}: built but not found"
    record = Build(tag, seconds, size, len(steps), len(cached))
    FIGURES.builds.append(record)
    return record


def inputs_digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def base_image(log_dir: Path) -> str:
    """The local stand-in for python:3.11-slim-bookworm: mmdebstrap, docker import, images/base.Dockerfile.

    Tagged by a hash of its inputs (mmdebstrap's arguments, the Dockerfile, the CA bundle), so it is built
    once and reused until one of them changes.
    """
    dockerfile = IMAGES / "base.Dockerfile"
    ca_bundle = CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else b""
    tag = f"vaeserve-test/base:{inputs_digest(' '.join(MMDEBSTRAP_ARGS).encode(), dockerfile.read_bytes(), ca_bundle)}"
    size = image_size(tag)
    if size is not None:
        FIGURES.builds.append(Build(tag, 0.0, size, note="reused: its inputs are unchanged"))
        return tag
    mmdebstrap = shutil.which("mmdebstrap")
    assert mmdebstrap, "mmdebstrap is not installed (apt-get install mmdebstrap): it builds the local base image"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vaeserve-base-") as tmp:
        tarball = Path(tmp) / "bookworm.tar"
        log_path = log_dir / "mmdebstrap.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            done = subprocess.run([mmdebstrap, *MMDEBSTRAP_ARGS, str(tarball)], stdout=log, stderr=subprocess.STDOUT,
                                  timeout=1200)
        assert done.returncode == 0, f"mmdebstrap failed ({log_path}):\n{log_path.read_text()[-3000:]}"
        debian = tag.replace("/base:", "/debian:")
        docker("import", "--change", f"LABEL {LABEL}=1", str(tarball), debian, timeout_s=600)
        context = Path(tmp) / "context"
        context.mkdir()
        (context / "ca-certificates.crt").write_bytes(ca_bundle)
        bootstrap_s = time.monotonic() - started
        record = build(tag, context=context, log_dir=log_dir, dockerfile=dockerfile,
                       build_args={"DEBIAN_IMAGE": debian})
    record.seconds += bootstrap_s
    record.note = f"mmdebstrap + import {bootstrap_s:.0f}s"
    return tag


def _pip_download(dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                           "--dest", str(dest), *extra, f"torch=={TORCH_VERSION}"],
                          capture_output=True, text=True, timeout=900)


def write_simple_index(root: Path, wheels: Path) -> None:
    """A PEP 503 index of the wheels in root/<wheels>: root/simple/<project>/index.html links to each."""
    for wheel in sorted(wheels.glob("*.whl")):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
        page = root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        with page.open("a") as out:
            out.write(f'<a href="/{wheels.relative_to(root)}/{wheel.name}#sha256={sha256}">{wheel.name}</a><br>\n')


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def local_torch_index(workdir: Path) -> Iterator[str | None]:
    """http://127.0.0.1:PORT/simple serving this machine's CPU torch wheel and its dependencies, or None
    where pip finds no local CPU wheel (the Dockerfile's default index is used then)."""
    wheels = workdir / "torch-wheels"
    local = _pip_download(wheels, "--no-deps", "--no-index")  # only the machine's own wheel folders
    if local.returncode != 0 or not any("+cpu" in w.name for w in wheels.glob("torch-*.whl")):
        yield None
        return
    deps = _pip_download(wheels)
    assert deps.returncode == 0, f"pip download of torch's dependencies failed:\n{deps.stderr[-3000:]}"
    write_simple_index(workdir, wheels)
    handler = partial(_QuietHandler, directory=str(workdir))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
    except OSError:  # taken: any port works, the torch layer is only rebuilt
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()

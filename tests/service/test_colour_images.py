"""Your own images, end to end: an MVTec AD-layout folder of colour PNG and JPEG files at mixed sizes
(tinted real Fashion-MNIST: trousers normal, four other classes as defects) is trained with the conv
VAE at 32x32x3, evaluated, exported and served; requests in PNG, JPEG and .npy score, and the page
draws colour."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.data import write_image_folder
from harness.servers import REPO, ServerProcess, start_server

TRAIN = ["--architecture", "conv", "--hidden", "128", "--latent-dim", "16", "--likelihood", "gaussian",
         "--image-size", "32", "32", "--epochs", "40", "--precision", "fp32", "--seed", "0"]


def vaeserve(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "vaeserve", *args], capture_output=True, text=True, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colour")
    folder = write_image_folder(root / "photos", normal=1, anomalies=(0, 2, 7, 8), train_items=1500,
                                test_items=200)
    vaeserve("train", "--data", str(folder), "--out", str(root / "run"), *TRAIN)
    vaeserve("evaluate", "--checkpoint", str(root / "run" / "best.pt"), "--iwae-examples", "50", "--iwae-k", "50")
    vaeserve("export", "--checkpoint", str(root / "run" / "best.pt"), "--out", str(root / "artifacts"))
    return {"folder": folder, "run": root / "run", "artifacts": root / "artifacts"}


@pytest.fixture(scope="module")
def colour_server(colour_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(colour_run["artifacts"], tmp_path_factory.mktemp("colour-logs"))
    yield proc
    proc.stop()


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_the_folder_trains_a_colour_model_that_separates_its_defects(colour_run: dict[str, Path]) -> None:
    evaluation = json.loads((colour_run["run"] / "evaluation.json").read_text())
    assert evaluation["auroc"]["elbo"] > 0.9, evaluation["auroc"]
    manifest = json.loads((colour_run["artifacts"] / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [3, 32, 32] and manifest["input"]["formats"] == ["PNG", "JPEG"]
    assert manifest["model"]["name"] == "photos-vae", "named after the dataset, not fashion-mnist"


def test_png_jpeg_and_npy_items_of_any_size_score_alike(colour_server: ServerProcess,
                                                         colour_run: dict[str, Path]) -> None:
    folder = colour_run["folder"]
    normal = sorted((folder / "test" / "good").iterdir())[:6]
    defects = sorted((folder / "test" / "bag").iterdir())[:6]
    assert {p.suffix for p in normal + defects} >= {".png", ".jpg"}, "both formats are in the request"
    refused = httpx.post(colour_server.url + "/anomaly-score", timeout=60,
                         json={"inputs": [encoded(p) for p in normal + defects], "seed": 0})
    assert refused.status_code == 422 and "this model takes 32x32" in refused.json()["error"], refused.text
    answer = httpx.post(colour_server.url + "/anomaly-score", timeout=60,
                        json={"inputs": [encoded(p) for p in normal + defects], "seed": 0, "heatmap": True,
                              "resize": True})
    assert answer.status_code == 200, answer.text
    scores = [r["score"] for r in answer.json()["results"]]
    assert np.mean(scores[6:]) > np.mean(scores[:6]), "the defects score higher than the normal images"
    heatmap = Image.open(io.BytesIO(base64.b64decode(answer.json()["results"][0]["heatmap_png"])))
    assert heatmap.size == (32, 32)
    # The same image as channels-first numbers: the service decoded the file as training did.
    with Image.open(normal[0]) as image:
        rgb = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    nested = httpx.post(colour_server.url + "/anomaly-score", timeout=60,
                        json={"inputs": [rgb.transpose(2, 0, 1).tolist()], "seed": 0})
    assert nested.json()["results"][0]["score"] == pytest.approx(scores[0], rel=1e-5)


def test_samples_and_reconstructions_are_colour_images_the_model_accepts_back(colour_server: ServerProcess) -> None:
    grid = httpx.post(colour_server.url + "/sample", json={"n": 4, "seed": 1}, headers={"accept": "image/png"},
                      timeout=60)
    assert grid.status_code == 200, grid.text
    image = Image.open(io.BytesIO(grid.content))
    assert image.mode == "RGB" and image.size == (64, 64)
    samples = httpx.post(colour_server.url + "/sample", json={"n": 4, "seed": 1}, timeout=60).json()["samples"]
    values = np.asarray(samples)
    assert values.shape == (4, 3072) and values.min() >= 0 and values.max() <= 1, "within the range it accepts"
    recon = httpx.post(colour_server.url + "/reconstruct", json={"inputs": samples}, timeout=60)
    assert recon.status_code == 200
    again = httpx.post(colour_server.url + "/anomaly-score", json={"inputs": recon.json()["reconstructions"]},
                       timeout=60)
    assert again.status_code == 200, "a Gaussian image model scores its own output"
    png = httpx.post(colour_server.url + "/reconstruct", json={"inputs": [base64.b64encode(grid.content).decode()],
                                                               "resize": True}, timeout=60)
    out = Image.open(io.BytesIO(base64.b64decode(png.json()["reconstructions"][0])))
    assert out.mode == "RGB" and out.size == (32, 32)


def test_the_page_draws_colour_samples(colour_server: ServerProcess) -> None:
    from tests.test_web_page import ARTIFACTS, page_at

    with page_at(colour_server.url) as page:
        rgb = page.locator("#sample-grid button:first-child canvas").evaluate(
            """(el) => { const d = el.getContext("2d").getImageData(0, 0, el.width, el.height).data;
                         let spread = 0; for (let i = 0; i < d.length; i += 4)
                           spread = Math.max(spread, Math.abs(d[i] - d[i + 1]), Math.abs(d[i + 1] - d[i + 2]));
                         return [el.width, el.height, spread]; }""")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-colour.png"), full_page=True)
    assert rgb[:2] == [32, 32] and rgb[2] > 2, f"a colour sample drawn in colour (grey has R = G = B), got {rgb}"

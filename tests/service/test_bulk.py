"""`vaeserve score` against a real server and offline on the same artifacts: the same scores for the
same seed, the seed of each chunk pinned to the API, every input format, a full queue waited out,
bad items named by their index in the file, and no torch needed online."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.servers import REPO, ServerProcess, start_server
from vaeserve.cli import main

ITEMS = 600  # three chunks of 256, 256 and 88


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    return {name: np.array(values, dtype=object) if name == "file" else
            np.array([v == "True" for v in values]) if name == "is_anomaly" else np.array(values, dtype=np.float64)
            for name, values in columns.items()}


def score(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["score", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def items_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data import load_fashion_mnist

    path = tmp_path_factory.mktemp("bulk") / "items.npy"
    np.save(path, load_fashion_mnist().test_x[:ITEMS])
    return path


def test_offline_and_online_scores_agree_for_the_same_seed(server: ServerProcess, artifacts_dir: Path,
                                                           items_npy: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    online = score(capsys, str(items_npy), "--url", server.url, "--out", str(tmp_path / "online.csv"), "--seed", "3",
                   "--concurrency", "3")
    offline = score(capsys, str(items_npy), "--artifacts", str(artifacts_dir), "--out", str(tmp_path / "offline.csv"),
                    "--seed", "3")
    a, b = read_csv(tmp_path / "online.csv"), read_csv(tmp_path / "offline.csv")
    assert len(a["score"]) == ITEMS and a["index"].tolist() == list(range(ITEMS))
    for name in ("score", "reconstruction_nll", "kl", "percentile", "p_value", "threshold"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)  # measured here: bit-equal
    assert np.array_equal(a["is_anomaly"], b["is_anomaly"])
    for summary in (online, offline):
        assert summary["items"] == ITEMS and summary["flagged"] == int(a["is_anomaly"].sum())
        assert summary["items_per_s"] > 0 and summary["seed"] == 3 and summary["model"]["name"] == "tiny-vae"
    assert (online["mode"], offline["mode"]) == ("online", "offline")

    # Chunk 1 (items 256..511) is the request /anomaly-score would get with seed 3 + 1.
    x = np.load(items_npy)[256:512]
    response = httpx.post(server.url + "/anomaly-score", json={"inputs": x.tolist(), "seed": 4}, timeout=60).json()
    np.testing.assert_allclose(a["score"][256:512], [r["score"] for r in response["results"]], rtol=1e-6)
    # The CSV's p-values are the service's conformal p-values, online and offline.
    np.testing.assert_allclose(b["p_value"][256:512], [r["p_value"] for r in response["results"]], rtol=1e-6)
    assert ((0 < b["p_value"]) & (b["p_value"] <= 1)).all()
    other = score(capsys, str(items_npy), "--artifacts", str(artifacts_dir), "--out", str(tmp_path / "seed0.csv"))
    assert other["seed"] == 0 and not np.allclose(read_csv(tmp_path / "seed0.csv")["score"], b["score"])


def test_csv_rows_and_png_folders_score_like_the_api(server: ServerProcess, artifacts_dir: Path, items_npy: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.load(items_npy)[:40]
    table = tmp_path / "items.csv"
    np.savetxt(table, x, delimiter=",", fmt="%.9g", header=",".join(f"p{i}" for i in range(784)), comments="")
    score(capsys, str(table), "--artifacts", str(artifacts_dir), "--out", str(tmp_path / "csv.csv"), "--chunk-size", "16")
    score(capsys, str(items_npy), "--artifacts", str(artifacts_dir), "--out", str(tmp_path / "npy.csv"),
          "--chunk-size", "16")
    np.testing.assert_allclose(read_csv(tmp_path / "csv.csv")["score"], read_csv(tmp_path / "npy.csv")["score"][:40],
                               rtol=1e-6)

    folder = tmp_path / "pngs"
    folder.mkdir()
    pngs = []
    for seed in (2, 1):  # written b-then-a: rows follow the sorted file names
        png = httpx.post(server.url + "/sample", json={"n": 1, "seed": seed}, headers={"accept": "image/png"}).content
        (folder / f"{'ab'[seed - 1]}.png").write_bytes(png)
        pngs.insert(0, base64.b64encode(png).decode())
    summary = score(capsys, str(folder), "--url", server.url, "--out", str(tmp_path / "png.csv"), "--target-fpr", "0.05")
    rows = read_csv(tmp_path / "png.csv")
    assert summary["items"] == 2 and rows["file"].tolist() == ["a.png", "b.png"]
    api = httpx.post(server.url + "/anomaly-score", json={"inputs": pngs, "target_fpr": 0.05}).json()["results"]
    np.testing.assert_allclose(rows["score"], [r["score"] for r in api], rtol=1e-6)
    np.testing.assert_allclose(rows["threshold"], [r["threshold"] for r in api], rtol=1e-9)
    score(capsys, str(folder), "--artifacts", str(artifacts_dir), "--out", str(tmp_path / "png-offline.csv"),
          "--target-fpr", "0.05")
    np.testing.assert_allclose(read_csv(tmp_path / "png-offline.csv")["score"], rows["score"], rtol=1e-6)


def test_bad_items_are_named_by_their_index_in_the_file(server: ServerProcess, artifacts_dir: Path, items_npy: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.load(items_npy)
    x[300, 5] = 2.0
    bad = tmp_path / "bad.npy"
    np.save(bad, x)
    for where in (["--url", server.url], ["--artifacts", str(artifacts_dir)]):
        assert main(["score", str(bad), *where, "--out", str(tmp_path / "out.csv")]) == 2
        assert "INPUT item 300: values must be in [0, 1]" in capsys.readouterr().err
    many = tmp_path / "many.npy"
    np.save(many, np.concatenate([np.load(items_npy), np.load(items_npy)]))  # 1,200 items > max_items_per_request
    assert main(["score", str(many), "--url", server.url, "--out", str(tmp_path / "out.csv"), "--chunk-size", "2000"]) == 2
    assert "smaller --chunk-size" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "missing.npy"), "--url", server.url, "--out", str(tmp_path / "o.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "items.txt").write_text("1,2\n")
    assert main(["score", str(tmp_path / "items.txt"), "--url", server.url, "--out", str(tmp_path / "o.csv")]) == 2
    assert ".npy array, a .csv" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "o.csv").exists()


def test_online_scoring_waits_out_a_full_queue_without_torch(artifacts_dir: Path, items_npy: Path,
                                                             tmp_path: Path) -> None:
    """`python -m vaeserve score --url` with torch unimportable (the serve image), against a queue
    that holds one chunk: every chunk is answered after 429s, and a pipe gets no progress bar."""
    proc = start_server(artifacts_dir, tmp_path / "logs", max_queue_items=256)
    code = ("import sys; sys.modules['torch'] = None; from vaeserve.cli import main; sys.exit(main(sys.argv[1:]))")
    try:
        done = subprocess.run([sys.executable, "-c", code, "score", str(items_npy), "--url", proc.url, "--out",
                               str(tmp_path / "scores.csv"), "--concurrency", "3", "--mc-samples", "64"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["items"] == ITEMS and len(read_csv(tmp_path / "scores.csv")["score"]) == ITEMS
        assert "scoring" not in done.stderr and "\r" not in done.stderr
        metrics = httpx.get(proc.url + "/metrics").text
        refused = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("vaeserve_rejections_total"))
        assert refused > 0, "the queue never filled: the test proves nothing"
    finally:
        proc.stop()

"""Your own table, end to end: a CSV with a header, a 3-level string column, an id column, a boolean and
6% empty cells (and the same table as Parquet) is trained with per-column likelihoods, exported and served;
records by column name score, the column pushed out of range leads the explanation, an unseen category is
scored and reported, new ids change nothing, and every bad input is refused naming its column."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.servers import REPO, ServerProcess, start_server
from harness.tables import sensor_table, write_csv, write_parquet

ROWS = 2400
TRAIN = ["--ignore", "id", "--hidden", "64", "64", "--latent-dim", "4", "--epochs", "25", "--batch-size", "64",
         "--precision", "fp32", "--seed", "0"]


def vaeserve(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "vaeserve", *args], capture_output=True, text=True, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert (result.returncode == 0) == ok, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("table")
    columns = sensor_table(ROWS, seed=0)
    paths = {"csv": write_csv(root / "sensors.csv", columns), "parquet": write_parquet(root / "sensors.parquet", columns),
             "fresh": write_csv(root / "fresh.csv", sensor_table(300, seed=1))}
    vaeserve("train", "--data", str(paths["csv"]), "--out", str(root / "run"), *TRAIN)
    vaeserve("export", "--checkpoint", str(root / "run" / "best.pt"), "--out", str(root / "artifacts"))
    return {**paths, "run": root / "run", "artifacts": root / "artifacts", "root": root}


@pytest.fixture(scope="module")
def table_server(table_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(table_run["artifacts"], tmp_path_factory.mktemp("table-logs"))
    yield proc
    proc.stop()


def fresh_records(table_run: dict[str, Path]) -> list[dict[str, object]]:
    """Normal rows the model never saw, as JSON records (empty cells as null, the id kept)."""
    with table_run["fresh"].open() as handle:
        rows = list(csv.DictReader(handle))
    numeric = ("temperature", "pressure", "humidity")
    return [{k: (None if v == "" else float(v) if k in numeric else int(v) if k == "id" else v == "true"
                 if k == "valve_open" else v) for k, v in row.items()} for row in rows]


def score(server: ServerProcess, inputs: list[object], **options: object) -> httpx.Response:
    return httpx.post(server.url + "/anomaly-score", json={"inputs": inputs, "seed": 0, **options}, timeout=60)


def test_the_manifest_carries_the_schema_training_inferred(table_run: dict[str, Path]) -> None:
    manifest = json.loads((table_run["artifacts"] / "manifest.json").read_text())
    table = manifest["input"]["table"]
    kinds = {c["name"]: (c["kind"], c["nullable"]) for c in table["columns"]}
    assert kinds == {"site": ("categorical", True), "temperature": ("numeric", True), "pressure": ("numeric", False),
                     "humidity": ("numeric", True), "valve_open": ("categorical", False)}
    assert table["ignored"] == ["id"]
    site = next(c for c in table["columns"] if c["name"] == "site")
    assert site["levels"] == ["A", "B", "C", "<missing>"], "by frequency, the empty cells a level of their own"
    assert manifest["likelihood"] == "table" and manifest["model"]["name"] == "sensors-vae"


def test_csv_and_parquet_are_the_same_table(table_run: dict[str, Path]) -> None:
    from training.data import DataSpec, load_dataset

    spec = {"kind": "table", "ignore": ("id",)}
    from_csv = load_dataset(DataSpec(path=str(table_run["csv"]), **spec))  # type: ignore[arg-type]
    from_parquet = load_dataset(DataSpec(path=str(table_run["parquet"]), **spec))  # type: ignore[arg-type]
    assert from_csv.info["table"] == from_parquet.info["table"]
    np.testing.assert_array_equal(from_csv.train_x, from_parquet.train_x)
    assert np.isnan(from_csv.train_x).sum() == 0, "empty cells are encoded (masked), never NaN"


def test_records_by_name_score_and_the_pushed_column_leads_the_explanation(
        table_server: ServerProcess, table_run: dict[str, Path]) -> None:
    records = fresh_records(table_run)[:40]
    complete = next(r for r in records if all(v is not None for v in r.values()))
    pushed = [{**complete, column: complete[column] + 12 * sd}  # type: ignore[operator]
              for column, sd in (("temperature", 3.5), ("pressure", 7.0), ("humidity", 5.5))]
    answer = score(table_server, [*records, *pushed], explain=True)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    normal = np.array([r["score"] for r in results[:40]])
    assert np.mean([r["is_anomaly"] for r in results[:40]]) <= 0.1, "fresh normal rows are mostly not flagged"
    for result, column in zip(results[40:], ("temperature", "pressure", "humidity")):
        assert result["is_anomaly"] and result["score"] > normal.max()
        assert result["explanation"][0]["column"] == column, result["explanation"]
        assert [e["column"] for e in result["explanation"]] != [], "every column named"
        assert sum(result["feature_nll"]) == pytest.approx(result["reconstruction_nll"], rel=1e-9)
        assert len(result["feature_nll"]) == 5, "one NLL per column, in the schema's order"


def test_new_ids_and_positional_rows_score_exactly_as_the_records(table_server: ServerProcess,
                                                                   table_run: dict[str, Path]) -> None:
    records = fresh_records(table_run)[:20]
    renumbered = [{**r, "id": 9_000_000 + i} for i, r in enumerate(records)]
    without_id = [{k: v for k, v in r.items() if k != "id"} for r in records]
    order = ["site", "temperature", "pressure", "humidity", "valve_open"]
    rows = [[r[k] for k in order] for r in records]
    scores = [[r["score"] for r in score(table_server, inputs).json()["results"]]
              for inputs in (records, renumbered, without_id, rows)]
    assert scores[0] == scores[1] == scores[2] == scores[3], "the id is not a feature; rows are records in order"


def test_an_unseen_category_is_scored_as_unusual_and_reported(table_server: ServerProcess,
                                                              table_run: dict[str, Path]) -> None:
    records = fresh_records(table_run)[:200]
    normal = np.array([r["score"] for r in score(table_server, records).json()["results"]])
    complete = next(r for r in records if all(v is not None for v in r.values()))
    answer = score(table_server, [{**complete, "site": "Z"}], explain=True)
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["unseen_categories"] == [{"column": "site", "value": "Z"}]
    assert result["score"] > np.quantile(normal, 0.95), "a category never seen is unusual, not the most normal"
    assert result["explanation"][0]["column"] == "site"


@pytest.mark.parametrize(("record", "message"), [
    ({"temp": 20.0}, "inputs[0].temp: unknown column"),
    ({"temperature": "hot"}, "inputs[0].temperature: must be a number"),
    ({"pressure": None}, "inputs[0].pressure: a value is required"),
    ({"pressure": "__drop__"}, "inputs[0].pressure: missing required column"),
    ({"valve_open": None}, "inputs[0].valve_open: a value is required"),
    ({"site": {"code": "A"}}, "inputs[0].site: must be a category"),
    ({"pressure": 1e300}, "inputs[0].pressure: must be a finite number within"),
])
def test_bad_records_get_a_422_naming_the_column(table_server: ServerProcess, table_run: dict[str, Path],
                                                  record: dict[str, object], message: str) -> None:
    base = next(r for r in fresh_records(table_run) if all(v is not None for v in r.values()))
    item = {k: v for k, v in {**base, **record}.items() if v != "__drop__"}
    answer = httpx.post(table_server.url + "/anomaly-score", json={"inputs": [item]}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"], answer.json()


def test_a_row_of_the_wrong_length_is_refused_with_the_column_order(table_server: ServerProcess) -> None:
    answer = score(table_server, [["A", 20.0, 1040.0]])
    assert answer.status_code == 422
    assert "['site', 'temperature', 'pressure', 'humidity', 'valve_open']" in answer.json()["error"]


def test_reconstructions_and_samples_are_records(table_server: ServerProcess, table_run: dict[str, Path]) -> None:
    record = fresh_records(table_run)[0]
    recon = httpx.post(table_server.url + "/reconstruct", json={"inputs": [record]}, timeout=30).json()
    assert set(recon["reconstructions"][0]) == {"site", "temperature", "pressure", "humidity", "valve_open"}
    samples = httpx.post(table_server.url + "/sample", json={"n": 50, "seed": 0}, timeout=30).json()["samples"]
    assert {s["site"] for s in samples} <= {"A", "B", "C", None}
    assert {s["valve_open"] for s in samples} <= {True, False}, "a boolean column comes back as booleans"
    pressures = np.array([s["pressure"] for s in samples])
    assert 1020 < pressures.mean() < 1065, "samples in training units, not standardized"


def test_the_client_takes_a_dataframe_and_score_carries_the_id_column(
        table_server: ServerProcess, table_run: dict[str, Path]) -> None:
    pandas = pytest.importorskip("pandas")
    from service.client import VAEClient

    frame = pandas.read_parquet(table_run["parquet"]).head(30)
    with VAEClient(table_server.url) as client:
        from_frame = client.anomaly_score(frame, seed=0)
        from_dicts = client.anomaly_score(frame.to_dict(orient="records"), seed=0)
    np.testing.assert_array_equal(from_frame.score, from_dicts.score)
    root = table_run["root"]
    vaeserve("score", str(table_run["parquet"]), "--artifacts", str(table_run["artifacts"]), "--id-column", "id",
             "--out", str(root / "offline.csv"))
    vaeserve("score", str(table_run["csv"]), "--url", table_server.url, "--id-column", "id",
             "--out", str(root / "online.csv"))
    offline, online = (list(csv.reader((root / name).open())) for name in ("offline.csv", "online.csv"))
    assert offline[0][:3] == ["index", "id", "score"] and len(offline) == ROWS + 1
    assert [row[1] for row in offline[1:]] == [str(100_000 + i) for i in range(ROWS)], "ids as written, whole"
    np.testing.assert_allclose([float(r[2]) for r in offline[1:]], [float(r[2]) for r in online[1:]], rtol=1e-5)


def test_the_page_is_a_form_of_the_columns_and_names_the_column_to_blame(table_server: ServerProcess,
                                                                          table_run: dict[str, Path]) -> None:
    from tests.test_web_page import ARTIFACTS, page_at

    with page_at(table_server.url, height=1000) as page:
        names = page.locator("#table-form input[name]").evaluate_all("(els) => els.map((e) => e.name)")
        samples = page.locator("#table-samples tbody tr").count()
        page.fill("#table-form input[name=pressure]", "1400")
        page.click("#table-score-button")
        page.wait_for_function("document.querySelector('#table-score dd:last-of-type')?.textContent.startsWith('yes')")
        first = page.locator("#table-explanation tbody tr:first-child td:first-child").inner_text()
        page.click("#table-labels button[data-label=anomaly]")  # the operator's verdict, by its score_id
        page.wait_for_function("document.querySelector('#feedback-summary tbody tr td:nth-child(3)')"
                               "?.textContent.startsWith('1 /')")
        page.set_input_files("#job-upload", str(table_run["parquet"]))
        page.wait_for_function("[...document.querySelectorAll('#jobs-table tbody td')]"
                               ".some((td) => td.textContent === 'succeeded')")
        page.fill("#table-form input[name=pressure]", "")
        page.click("#table-score-button")
        page.wait_for_selector("#table-error:not([hidden])")
        error = page.locator("#table-error").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-table.png"), full_page=True)
    assert names == ["site", "temperature", "pressure", "humidity", "valve_open"] and samples == 8
    assert first == "pressure", "the column pushed out of range leads the explanation"
    assert "inputs[0].pressure: a value is required" in error, error


def test_the_documentation_examples_are_records_of_this_model(table_server: ServerProcess) -> None:
    schema = httpx.get(table_server.url + "/openapi.json", timeout=30).json()
    example = schema["components"]["schemas"]["AnomalyScoreRequest"]["examples"][0]["inputs"][0]
    assert set(example) == {"site", "temperature", "pressure", "humidity", "valve_open"}
    answer = score(table_server, [example])
    assert answer.status_code == 200, "the documented example is a valid request"


def test_a_table_job_and_feedback_on_a_record(table_server: ServerProcess, table_run: dict[str, Path]) -> None:
    from service.client import VAEClient

    with VAEClient(table_server.url) as client:
        job = client.submit_job(table_run["parquet"])
        state = client.wait_for_job(job["id"], timeout_s=120)
        assert state["state"] == "succeeded", state
        result = client.job_result(job["id"]).decode()
    root = table_run["root"]
    vaeserve("score", str(table_run["parquet"]), "--url", table_server.url, "--out", str(root / "plain.csv"))
    assert result == (root / "plain.csv").read_bytes().decode(), "a job of a table scores as `vaeserve score` does"
    record = fresh_records(table_run)[0]
    answer = httpx.post(table_server.url + "/feedback", timeout=30,
                        json={"items": [{"item": {**record, "pressure": 1400.0}, "label": "anomaly"}]})
    assert answer.status_code == 200, answer.text

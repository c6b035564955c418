"""Feedback against a real server: labels quoted by score_id (or sent with the item) round-trip into a
summary whose figures equal a direct computation; forged, foreign and repeated labels are refused or
merged by the documented rule; recalibration is admin-only, served at once, reversible, and fails no
request made meanwhile; two workers share the store."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.servers import ServerProcess, start_server
from service.core.score_ids import ScoreIds

ADMIN = {"Authorization": "Bearer admin-key"}
SECRET = "a-test-secret-of-at-least-16-bytes"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson 1927, written out again here: the summary must agree with it."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.fixture(scope="module")
def fb_server(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(artifacts_dir, tmp_path_factory.mktemp("feedback"), admin_api_keys='["admin-key"]',
                        score_id_secret=SECRET)
    yield proc
    proc.stop()


def scored(url: str, x: np.ndarray, **options: object) -> list[dict]:
    response = httpx.post(url + "/anomaly-score", json={"inputs": x.tolist(), **options}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_feedback_round_trip_summary_equals_a_direct_computation(fb_server: ServerProcess,
                                                                  test_images: np.ndarray) -> None:
    results = scored(fb_server.url, test_images)
    threshold = float(np.median([r["score"] for r in results]))  # a cut that splits the labels both ways
    change = httpx.post(fb_server.url + "/models/tiny-vae/threshold/recalibrate", headers=ADMIN, timeout=30,
                        json={"goal": "target_fpr", "target": 0.5, "dry_run": True})
    assert change.status_code == 200 and change.json()["revision"] is None  # dry run: nothing written
    labels = ["anomaly" if i % 3 == 0 else "normal" for i in range(len(results))]
    body = {"items": [{"score_id": r["score_id"], "label": label} for r, label in zip(results, labels)]}
    answer = httpx.post(fb_server.url + "/models/tiny-vae/feedback", json=body, timeout=30).json()
    assert (answer["received"], answer["created"]) == (len(results), len(results))
    again = httpx.post(fb_server.url + "/feedback", json=body, timeout=30).json()  # default-model form, same ids
    assert (again["created"], again["unchanged"]) == (0, len(results))

    summary = httpx.get(fb_server.url + "/models/tiny-vae/feedback/summary", timeout=30).json()
    [entry] = summary["versions"]
    threshold = entry["threshold"]
    assert entry["threshold_source"] == "manifest" and threshold == results[0]["threshold"]
    flagged = np.array([r["score"] > threshold for r in results])
    truth = np.array([label == "anomaly" for label in labels])
    tp, fp = int((flagged & truth).sum()), int((flagged & ~truth).sum())
    fn, tn = int((~flagged & truth).sum()), int((~flagged & ~truth).sum())
    assert entry["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert entry["labels"] == {"total": len(labels), "anomaly": int(truth.sum()), "normal": int((~truth).sum())}
    for name, k, n in (("recall", tp, tp + fn), ("false_alarm_rate", fp, fp + tn), ("precision", tp, tp + fp)):
        figure = entry[name]
        assert (figure["successes"], figure["trials"]) == (k, n)
        if n:
            assert figure["value"] == pytest.approx(k / n)
            assert figure["ci95"] == pytest.approx(wilson(k, n), abs=1e-12)


def test_an_item_sent_with_its_label_is_scored_like_a_one_item_request(fb_server: ServerProcess,
                                                                        test_images: np.ndarray) -> None:
    [expected] = scored(fb_server.url, test_images[5:6], seed=7)
    body = {"items": [{"item": test_images[5].tolist(), "label": "normal"}], "seed": 7}
    answer = httpx.post(fb_server.url + "/models/tiny-vae/feedback", json=body, timeout=30).json()
    assert answer["items"][0]["score"] == expected["score"] and answer["created"] == 1
    relabel = httpx.post(fb_server.url + "/models/tiny-vae/feedback", timeout=30,
                         json={**body, "items": [{**body["items"][0], "label": "anomaly"}]}).json()
    assert relabel["updated"] == 1  # the rule: the newer label replaces the older one


@pytest.mark.parametrize(("entry", "status", "message"), [
    ({"score_id": "not-a-token", "label": "normal"}, 422, "not a score_id this service issued"),
    ({"score_id": "forged", "label": "normal"}, 422, "not a score_id this service issued"),
    ({"score_id": "other-model", "label": "normal"}, 422, "issued by model 'other-vae'"),
    ({"score_id": "ok", "label": "maybe"}, 422, "items.0.label"),
    ({"label": "normal"}, 422, "exactly one of score_id and item"),
    ({"item": [0.5] * 5, "label": "normal"}, 422, "items[0].item"),
])
def test_bad_feedback_is_refused_naming_the_problem(fb_server: ServerProcess, test_images: np.ndarray,
                                                    entry: dict, status: int, message: str) -> None:
    [real] = scored(fb_server.url, test_images[:1])
    signer = ScoreIds(SECRET.encode())
    tokens = {"ok": real["score_id"], "forged": real["score_id"][:-4] + ("AAAA" if real["score_id"][-4:] != "AAAA" else "BBBB"),
              "other-model": signer.issue(model="other-vae", version="1", variant="elbo", scores=[1.0],
                                          threshold=2.0, flags=[False])[0]}
    entry = {**entry, **({"score_id": tokens.get(entry["score_id"], entry["score_id"])} if "score_id" in entry else {})}
    response = httpx.post(fb_server.url + "/models/tiny-vae/feedback", json={"items": [entry]}, timeout=30)
    assert response.status_code == status and message in response.json()["error"], response.text


def test_the_same_item_twice_in_one_request_names_both_places(fb_server: ServerProcess,
                                                              test_images: np.ndarray) -> None:
    [real] = scored(fb_server.url, test_images[:1])
    body = {"items": [{"score_id": real["score_id"], "label": "normal"}] * 2}
    response = httpx.post(fb_server.url + "/feedback", json=body, timeout=30)
    assert response.status_code == 422 and "items[0] and items[1]" in response.json()["error"]


def test_recalibration_is_admin_only_served_at_once_reversible_and_fails_no_request_under_load(
        fb_server: ServerProcess, test_images: np.ndarray) -> None:
    results = scored(fb_server.url, test_images)
    order = np.argsort([r["score"] for r in results])
    labels = {int(i): ("anomaly" if rank >= len(order) // 2 else "normal") for rank, i in enumerate(order)}
    httpx.post(fb_server.url + "/feedback", timeout=30,
               json={"items": [{"score_id": results[i]["score_id"], "label": labels[i]} for i in labels]})
    url = fb_server.url + "/models/tiny-vae/threshold/recalibrate"
    assert httpx.post(url, json={"goal": "f1"}, timeout=30).status_code == 401

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post(fb_server.url + "/anomaly-score",
                                            json={"inputs": test_images[:4].tolist()}).status_code)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        manifest = results[0]["threshold"]
        for _ in range(3):
            change = httpx.post(url, json={"goal": "f1", "prevalence": 0.5}, headers=ADMIN, timeout=30).json()
            served = scored(fb_server.url, test_images[:1])[0]["threshold"]
            assert served == change["threshold"] != manifest  # no reload, the next request has it
            back = httpx.post(fb_server.url + "/models/tiny-vae/threshold/revert", headers=ADMIN, timeout=30).json()
            assert back["threshold"] == manifest == scored(fb_server.url, test_images[:1])[0]["threshold"]
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    history = httpx.get(fb_server.url + "/models/tiny-vae/threshold", timeout=30).json()["revisions"]
    assert len(history) >= 3 and not any(r["active"] for r in history)


def test_two_workers_share_labels_and_thresholds(artifacts_dir: Path, tmp_path: Path,
                                                 test_images: np.ndarray) -> None:
    server = start_server(artifacts_dir, tmp_path, workers=2, admin_api_keys='["admin-key"]')
    try:
        # A new connection per request: both workers answer some of them.
        ids = [httpx.post(server.url + "/anomaly-score", timeout=30,
                          json={"inputs": test_images[i:i + 1].tolist()}).json()["results"][0] for i in range(16)]
        items = [{"score_id": r["score_id"], "label": "anomaly" if i % 2 else "normal"} for i, r in enumerate(ids)]
        assert httpx.post(server.url + "/feedback", json={"items": items}, timeout=30).json()["created"] == 16
        for _ in range(6):  # whichever worker answers sees every label
            summary = httpx.get(server.url + "/feedback/summary", timeout=30).json()
            assert summary["versions"][0]["labels"]["total"] == 16
        change = httpx.post(server.url + "/models/tiny-vae/threshold/recalibrate", headers=ADMIN, timeout=30,
                            json={"goal": "target_fpr", "target": 0.2}).json()
        time.sleep(1.5)  # the other worker re-reads the policies every second
        served = {httpx.post(server.url + "/anomaly-score", json={"inputs": test_images[:1].tolist()},
                             timeout=30).json()["results"][0]["threshold"] for _ in range(10)}
        assert served == {change["threshold"]}
    finally:
        server.stop()


def test_the_client_labels_scores_and_recalibrates(fb_server: ServerProcess, test_images: np.ndarray) -> None:
    from service.client import VAEClient
    from service.client.types import InvalidInputError

    with VAEClient(fb_server.url) as client, VAEClient(fb_server.url, api_key="admin-key") as admin:
        scores = client.anomaly_score(test_images[:8], seed=11)
        assert scores.score_ids is not None and len(scores.score_ids) == 8
        answer = client.feedback([(sid, "normal") for sid in scores.score_ids], model="tiny-vae")
        assert answer["received"] == 8
        assert client.feedback_summary(model="tiny-vae")["versions"][0]["labels"]["total"] >= 8
        change = admin.recalibrate("target_fpr", target=0.3, model="tiny-vae", dry_run=True)
        assert change["revision"] is None and change["threshold"] > 0
        with pytest.raises(InvalidInputError, match="score_id"):
            client.feedback([("forged", "normal")], model="tiny-vae")

"""A model's graphs in less memory give the same answers: no arenas, one copy of the weights shared
by every session (service/core/weights.py), each file's sha256 checked once (core/verified.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from model.manifest import ArtifactError
from service.core.runtime import ModelRuntime, SessionLayout, load_runtime
from service.core.verified import VerifiedFiles
from service.core.weights import SharedWeights, initializers

PREVIOUS = SessionLayout()  # what every model ran with before: an arena and its own weights per session


def load(artifacts: Path, layout: SessionLayout, precision: str, verified: VerifiedFiles | None = None) -> ModelRuntime:
    return load_runtime(artifacts, backend="onnxruntime", device="cpu", intra_op_threads=1, precision=precision,
                        layout=layout, verified=verified)


def feeds_for(runtime: ModelRuntime, graph: str, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f = runtime.config.latent_dim, runtime.config.input_dim
    every = {"x": rng.random((n, f), dtype=np.float32), "z": rng.standard_normal((n, d), dtype=np.float32),
             "eps": rng.standard_normal((n, 16, d), dtype=np.float32), "u": rng.random(n, dtype=np.float32),
             "noise": rng.standard_normal((n, d), dtype=np.float32)}
    return {name: every[name] for name in runtime.inputs(graph)}


@pytest.mark.parametrize("precision", ["float32", "int8"])
@pytest.mark.parametrize("layout", [SessionLayout(arena=False), SessionLayout(arena=False, share_weights=True)],
                         ids=["no-arena", "shared-weights"])
def test_every_graph_answers_as_the_previous_layout(artifacts_dir: Path, int8_artifacts: Path, precision: str,
                                                    layout: SessionLayout) -> None:
    artifacts = int8_artifacts if precision == "int8" else artifacts_dir
    before, after = load(artifacts, PREVIOUS, precision), load(artifacts, layout, precision)
    assert set(after.graphs) == set(before.graphs)
    for graph in before.graphs:
        for n, seed in ((1, 0), (7, 1), (64, 2)):
            feeds = feeds_for(before, graph, n, seed)
            old, new = before.run(graph, feeds), after.run(graph, feeds)
            for name in old:
                if not layout.share_weights:  # the same kernels on the same weights: the same bits
                    np.testing.assert_array_equal(new[name], old[name], err_msg=f"{graph}.{name}")
                else:  # unpacked GEMMs sum in another order: float32 rounding, relative to the value
                    np.testing.assert_allclose(new[name], old[name], rtol=1e-6, atol=1e-6, err_msg=f"{graph}.{name}")


def test_the_graphs_share_one_copy_of_each_weight(artifacts_dir: Path) -> None:
    runtime = load(artifacts_dir, SessionLayout(arena=False, share_weights=True), "float32")
    assert isinstance(runtime.weights, SharedWeights)
    blobs = [(artifacts_dir / spec["onnx"]).read_bytes() for spec in runtime.manifest["graphs"].values()]
    every = [(i.dtype.str, i.shape, data[i.start:i.end]) for data in blobs for i in initializers(data)]
    # The encoder's weights are in the encoder and both scorers: held once, as is each distinct weight.
    assert runtime.weights.nbytes == sum(len(raw) for _, _, raw in set(every)) < sum(len(raw) for *_, raw in every)


def test_a_file_is_hashed_once_until_it_changes(artifacts_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for item in artifacts_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    verified = VerifiedFiles()
    load(copy, SessionLayout(), "float32", verified)
    graphs = verified.hashed
    assert graphs == len(load(copy, SessionLayout(), "float32", verified).graphs)  # the second load hashed nothing
    encoder = copy / "encoder.onnx"
    stat = encoder.stat()
    os.utime(encoder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: verified again
    load(copy, SessionLayout(), "float32", verified)
    assert verified.hashed == graphs + 1
    data = bytearray(encoder.read_bytes())
    data[200:203] = b"\xff\xfe\xfd"
    encoder.write_bytes(bytes(data))  # rewritten after it was verified: refused, not served from memory
    with pytest.raises(ArtifactError, match="encoder.onnx is corrupted"):
        load(copy, SessionLayout(), "float32", verified)

"""Reading a table for training: types inferred, ids and timestamps refused by name with the fix, the
per-column likelihood summing to the row's, and an encoding that round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.tables import sensor_table, write_csv, write_parquet
from model.config import VAEConfig
from model.table_schema import TableSchema
from model.vae import VAE
from training.data import DatasetError, DataSpec, load_dataset


def table(path: Path, **spec: object):  # type: ignore[no-untyped-def]
    return load_dataset(DataSpec(kind="table", path=str(path), **spec))  # type: ignore[arg-type]


def test_an_id_column_left_in_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", sensor_table(100))
    with pytest.raises(DatasetError, match=r"t.csv: column 'id' looks like an identifier.*--ignore id"):
        table(path)
    assert table(path, ignore=("id",)).info["table"]["ignored"] == ["id"]


def test_columns_that_cannot_be_features_are_named(tmp_path: Path) -> None:
    import datetime

    columns = sensor_table(60)
    columns["code"] = [f"c{i}" for i in range(60)]  # a distinct string per row
    columns["when"] = [datetime.datetime(2026, 1, 1) + datetime.timedelta(hours=i) for i in range(60)]
    columns["blank"] = [None] * 60
    path = write_parquet(tmp_path / "t.parquet", columns)
    with pytest.raises(DatasetError, match=r"column 'code' looks like an identifier"):
        table(path, ignore=("id",))
    with pytest.raises(DatasetError, match=r"column 'when' holds dates or times.*--ignore when"):
        table(path, ignore=("id", "code"))
    with pytest.raises(DatasetError, match=r"column 'blank' is empty in every row"):
        table(path, ignore=("id", "code", "when"))
    with pytest.raises(DatasetError, match=r"--ignore 'nope': .* has no such column"):
        table(path, ignore=("nope",))
    assert table(path, ignore=("id", "code", "when", "blank")).input_shape[0] > 0


def test_unreadable_and_tiny_tables_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=r"broken.parquet: not a readable Parquet table"):
        table(bad)
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("a,b\n1,x\n")
    with pytest.raises(DatasetError, match=r"tiny.csv: a table needs at least 3 rows"):
        table(tiny)


def test_forced_categorical_and_a_test_table_with_a_new_level(tmp_path: Path) -> None:
    columns = sensor_table(200)
    columns["zone"] = [i % 4 for i in range(200)]
    path = write_csv(tmp_path / "t.csv", columns)
    test = sensor_table(50, seed=3)
    test["zone"] = [7] * 50
    data = table(path, ignore=("id",), categorical=("zone",), test_path=str(write_csv(tmp_path / "test.csv", test)))
    zone = next(c for c in data.info["table"]["columns"] if c["name"] == "zone")
    assert zone["kind"] == "categorical" and zone["levels"] == ["0", "1", "2", "3"]
    schema = TableSchema.from_dict(data.info["table"])
    unseen = schema.feature_columns().index("zone") + 4  # the unseen level follows the four
    assert (data.test_x[:, unseen] == 1).all(), "a level training never saw is the unseen level, not all zeros"


def test_encoding_round_trips_and_the_likelihood_breaks_down_by_column(tmp_path: Path) -> None:
    data = table(write_csv(tmp_path / "t.csv", sensor_table(300)), ignore=("id",))
    schema = TableSchema.from_dict(data.info["table"])
    assert data.train_x.shape[1] == schema.width == sum(w for _, w in schema.blocks())
    decoded = schema.decode(data.val_x)
    again, _ = schema.encode_records(decoded)
    np.testing.assert_allclose(again, data.val_x, atol=1e-5)
    config = VAEConfig(input_shape=(schema.width,), hidden_sizes=(16,), latent_dim=2, likelihood="table",
                       table_blocks=schema.blocks())
    model = VAE(config)
    x = torch.from_numpy(data.val_x[:8])
    terms = model.monte_carlo_terms(x, torch.randn(8, 3, 2))
    per_column = schema.column_nll(-terms.log_px_features.mean(1).detach().numpy())
    assert per_column.shape == (8, 5)
    np.testing.assert_allclose(per_column.sum(1), -terms.log_px_features.mean(1).sum(-1).detach().numpy(), rtol=1e-5)


def test_a_missing_value_adds_no_gaussian_term() -> None:
    from model.table_likelihood import table_log_prob

    params = torch.tensor([[3.0, 0.0]])  # mean 3 for the value, logit 0 for "missing"
    log_var = torch.zeros(2)
    present = table_log_prob(params, torch.tensor([[0.0, 0.0]]), log_var, (("gaussian_masked", 2),))
    missing = table_log_prob(params, torch.tensor([[0.0, 1.0]]), log_var, (("gaussian_masked", 2),))
    assert present[0, 0] < -4 and missing[0, 0] == 0, "the imputed 0 is not scored against the mean"
    assert missing[0, 1] == pytest.approx(np.log(0.5)), "the indicator itself is scored (Bernoulli)"

"""Population stability index from per-bin counts computed in place."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fedlake.drift import bin_shares, psi, quantile_edges
from fedlake.silos import ParquetConnector


@pytest.fixture
def zone(tmp_path):
    rng = np.random.default_rng(3)
    zone = ParquetConnector("governed", "EU", tmp_path / "zone")
    train = pa.table({"dti": rng.gamma(2, 0.1, 5000), "share": rng.beta(2, 8, 5000)})
    same = pa.table({"dti": rng.gamma(2, 0.1, 5000), "share": rng.beta(2, 8, 5000)})
    shifted = pa.table({"dti": rng.gamma(2, 0.1, 5000) * 1.8, "share": rng.beta(2, 8, 5000)})
    for name, table in {"train": train, "same": same, "shifted": shifted}.items():
        zone.load(name, table.schema, table.to_batches())
    return zone


def test_deciles_give_ten_equal_bins_on_the_training_data(zone):
    edges = quantile_edges(zone, "train", ["dti", "share"])
    assert len(edges["dti"]) == 9
    shares = bin_shares(zone, "train", edges)
    assert shares["dti"] == pytest.approx([0.1] * 10, abs=0.002)
    assert sum(shares["share"]) == pytest.approx(1.0)


def test_psi_is_small_without_drift_and_large_with_it(zone):
    edges = quantile_edges(zone, "train", ["dti", "share"])
    base = bin_shares(zone, "train", edges)
    same = bin_shares(zone, "same", edges)
    shifted = bin_shares(zone, "shifted", edges)
    assert psi(base["dti"], same["dti"]) < 0.02
    assert psi(base["dti"], shifted["dti"]) > 0.2
    assert psi(base["share"], shifted["share"]) < 0.02


def test_psi_by_hand():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(0.5) * -1 + 0.25 * np.log(1.5))
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])

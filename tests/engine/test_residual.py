"""Where fragments meet: the residual's DuckDB reads the fragments it was given and nothing else."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from fedlake.errors import FedlakeError
from fedlake.residual import SPILL_PREFIX, Workspace, check_residual, sweep_spills


def reader(table: pa.Table) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))


def test_fragments_load_as_they_arrive_and_the_residual_streams_over_them():
    workspace = Workspace("256MB")
    counts: dict[str, tuple[int, int]] = {}
    workspace.load("__f0", reader(pa.table({"k": [1, 2, 2, 3], 'odd"name': ["a", "b", "c", "d"]})),
                   lambda rows, nbytes: counts.update(f0=(rows, nbytes)))
    workspace.load("__f1", reader(pa.table({"k": [2, 3, 4]})), lambda rows, nbytes: counts.update(f1=(rows, nbytes)))
    assert counts["f0"][0] == 4 and counts["f1"][0] == 3
    assert sorted(workspace.distinct([("__f0", "k"), ("__f1", "k")]).to_pylist()) == [1, 2, 3, 4]
    finished = {}
    result = workspace.run('SELECT a.k, count(*) AS n FROM "__f0" a JOIN "__f1" b USING (k) GROUP BY a.k ORDER BY 1',
                           lambda rows, nbytes: finished.update(rows=rows))
    assert result.read_all().to_pylist() == [{"k": 2, "n": 2}, {"k": 3, "n": 1}]
    assert finished["rows"] == 2


def test_the_duckdb_is_closed_to_files_and_settings():
    workspace = Workspace("256MB")
    workspace.load("__f0", reader(pa.table({"k": [1]})), lambda rows, nbytes: None)
    with pytest.raises(duckdb.Error, match="(?i)permission|disabled"):
        workspace.run("SELECT * FROM read_csv('/etc/passwd')", lambda rows, nbytes: None).read_all()
    workspace = Workspace("256MB")
    with pytest.raises(duckdb.Error, match="(?i)cannot change|disabled|locked"):
        workspace.run("SET enable_external_access = true", lambda rows, nbytes: None).read_all()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM people",
        "SELECT * FROM eu.__f0",
        "SELECT * FROM read_parquet('/data/x.parquet')",
        "DELETE FROM __f0",
        "SELECT FROM WHERE",
    ],
)
def test_a_residual_names_only_its_fragments(sql):
    with pytest.raises(FedlakeError, match="residual"):
        check_residual(sql, {"__f0", "__f1"})


def test_a_residual_may_name_its_own_ctes():
    check_residual("WITH x AS (SELECT * FROM __f0) SELECT * FROM x JOIN __f1 USING (k)", {"__f0", "__f1"})


def test_a_killed_workspaces_spill_folder_is_swept_a_live_ones_kept(tmp_path):
    """A process killed mid-residual (past its deadline, say) leaves its spill folder; the next
    workspace's sweep removes it, and never a folder whose process still runs."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"{SPILL_PREFIX}{dead.stdout.strip()}-abc"
    live = tmp_path / f"{SPILL_PREFIX}{os.getpid()}-def"
    for folder in (gone, live):
        folder.mkdir()
        (folder / "duckdb_temp_storage-0.tmp").write_bytes(b"x" * 1024)
    assert sweep_spills(tmp_path) == [gone]
    assert not gone.exists() and live.exists()

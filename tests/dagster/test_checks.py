"""The asset checks a compliance officer reads: undeclared PII found in place, and the audit chain."""

from __future__ import annotations

import duckdb
import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fedlake.silos import open_silo
from fedlake.synth.seed import seed_demo_bank
from platform_defs.definitions import EVERYTHING_JOB, build_definitions
from tests.conftest import REPO


@pytest.fixture
def small_bank(catalog, tmp_path):
    seed_demo_bank(catalog, "local", tmp_path, 0.01, 3)
    return tmp_path


def run(home, *keys: list[str]):
    defs = build_definitions(REPO / "silos.yaml", "local", home)
    result = defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, asset_selection=[dg.AssetKey(k) for k in keys]
    )
    checks = {
        (e.event_specific_data.asset_key.to_user_string(), e.event_specific_data.check_name): e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    return result, checks


def test_undeclared_pii_in_a_free_text_column_fails_its_check(small_bank, catalog):
    with open_silo(catalog.silo("sg_lake"), "local", small_bank) as lake:
        transactions = lake.execute("SELECT * FROM transactions").read_all()
        leaky = pc.if_else(
            pc.less(pa.array(range(transactions.num_rows)), 3),
            pa.scalar("refund to jane.doe@example.com"),
            transactions.column("memo"),
        )
        transactions = transactions.set_column(transactions.schema.get_field_index("memo"), "memo", leaky)
        lake.load("transactions", transactions.schema, transactions.to_batches())

    tables = [[silo, table] for silo, spec in catalog.silos.items() for table in spec.tables]
    result, checks = run(small_bank, *tables)
    flagged = checks[("sg_lake/transactions", "no_undeclared_pii")]
    assert not flagged.passed
    assert flagged.metadata["findings"].value == {"memo": {"email": 3}}
    assert "memo: 3 email" in flagged.description
    others = [c for key, c in checks.items() if key[1] == "no_undeclared_pii" and key[0] != "sg_lake/transactions"]
    assert len(others) == 12 and all(c.passed for c in others)


def test_a_tampered_ledger_fails_the_chain_check(small_bank):
    work = (["sg_lake", "monthly_spending"], ["us_lake", "monthly_spending"], ["eu_core", "monthly_spending"])
    run(small_bank, *work)
    result, checks = run(small_bank, ["governed", "audit_ledger"])
    assert checks[("governed/audit_ledger", "hash_chain_intact")].passed
    ledger_path = small_bank / "governed" / "audit.duckdb"
    with duckdb.connect(str(ledger_path)) as db:
        entries = db.execute("SELECT count(*) FROM audit_ledger").fetchone()[0]
        assert entries >= 3, "materializing the in-silo assets is recorded"
        db.execute("UPDATE audit_ledger SET requester = 'someone-else' WHERE seq = 2")
    _, checks = run(small_bank, ["governed", "audit_ledger"])
    chain = checks[("governed/audit_ledger", "hash_chain_intact")]
    assert not chain.passed
    assert chain.metadata["first_broken_entry"].value == 2
    assert "BROKEN at entry 2" in chain.description

"""`fedlake` answering as a user expects, run in-process through `main([...])`: one line naming the
problem for every bad input, results in four formats that read back equal, --max-rows that limits
what leaves the silo, and --client (or FEDLAKE_TOKEN) choosing who asks, refusals ledgered."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
import yaml

from fedlake.audit import open_ledger
from fedlake.cli import main
from fedlake.policy.transforms import local_secret
from tests.conftest import REPO

ROWS = ("SELECT customer_id, home_region, income / 7.0 AS income_share, created_at FROM sg_lake.customers "
        "ORDER BY created_at")  # floats with many digits, a pseudonym, a timestamp


@pytest.fixture
def cli(local_deployment, tmp_path, monkeypatch, capsys):
    """`fedlake ARGS...` against the seeded local deployment, with a ledger of its own: (exit code, stdout, stderr)."""
    monkeypatch.setenv("FEDLAKE_HOME", str(local_deployment.home))
    monkeypatch.setenv("FEDLAKE_LEDGER", str(tmp_path / "audit.duckdb"))
    monkeypatch.setenv("FEDLAKE_SILOS", str(REPO / "silos.yaml"))
    # the session's prod fixture exports its clients' tokens; the local deployment uses its own
    for name in ("FEDLAKE_COORDINATOR", "FEDLAKE_TOKEN", "FEDLAKE_DEPLOYMENT", "FEDLAKE_POLICIES", "FEDLAKE_TOKEN_COORDINATOR", "FEDLAKE_TOKEN_ANALYST"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.ledger = lambda: open_ledger(str(tmp_path / "audit.duckdb"))
    return run


def one_line_error(code: int, out: str, err: str, *named: str) -> str:
    assert code != 0, out
    assert out == "", f"nothing half-printed: {out!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    [line] = lines
    assert line.startswith("fedlake: error: ") and "Traceback" not in line, line
    assert "\x1b[" not in line and "sqlglot" not in line and "<class" not in line, line
    for word in named:
        assert word in line, f"{word!r} not named in: {line}"
    return line


def policies_with(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((REPO / "policies.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


MEGABYTE = "x" * 1_000_000


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["query", "SELECT count(*) FROM customers", "--purpose", "analytics"], ("'customers' names no silo", "silo.table")),
        (["query", "SELECT count(* FROM sg_lake.customers", "--purpose", "analytics"], ("cannot parse", "line 1, column 19", "Expecting )")),
        (["query", "SELECT home_region FROM sg_lake.customers WHERE", "--purpose", "analytics"], ("cannot parse", "'WHERE' is incomplete")),
        (["query", "SELECT custmer_id FROM sg_lake.customers", "--purpose", "analytics"],
         ("unknown column 'custmer_id'", "sg_lake.customers", "did you mean customer_id")),
        (["query", "SELECT count(*) FROM sg_lake.customers", "--purpose", "analytics", "--client", "mallory"], ("unknown client 'mallory'",)),
        (["policy", "explain", "SELECT home_region FROM sg_lake.customers", "--purpose", "analytics", "--to", "MARS"],
         ("unknown region 'MARS' in --to", "EU, SG, US")),
        (["query", "SELECT count(*) AS n FROM sg_lake.customers", "--purpose", MEGABYTE], ("may not declare purpose", "characters)")),
    ],
    ids=["unqualified-table", "syntax-error", "incomplete-where", "unknown-column", "unknown-client", "unknown-region", "megabyte-value"],
)
def test_a_bad_command_is_one_line_naming_the_problem(cli, argv, named):
    line = one_line_error(*cli(*argv), *named)
    assert len(line) < 1_000


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"generalize": {"date_of_birth": {"method": "age_band", "width": "ten"}, "postcode": {"method": "prefix", "length": 2}}},
         ("generalize.date_of_birth.width", "a positive whole number", "'ten'")),
        ({"generalize": {"date_of_birth": {"method": "age_band", "as_of": "someday"}, "postcode": {"method": "prefix", "length": 2}}},
         ("generalize.date_of_birth.as_of", "YYYY-MM-DD")),
        ({"clients": [{"coordinator": {"token_env": "FEDLAKE_TOKEN_COORDINATOR"}}]}, ("clients: expected a mapping", "not a list")),
        ({"clients": {"analyst": {"token_env": "T", "purposes": ["analytics", MEGABYTE]}}},
         ("clients.analyst.purposes[1]", "unknown purpose", "characters)")),
    ],
    ids=["generalize-width", "generalize-as-of", "clients-as-a-list", "megabyte-purpose"],
)
def test_a_malformed_policy_is_one_line_at_load(cli, tmp_path, changes, named):
    path = policies_with(tmp_path, **changes)
    result = cli("--policies", str(path), "policy", "explain", "SELECT home_region FROM sg_lake.customers",
                 "--purpose", "analytics", "--to", "EU")
    line = one_line_error(*result, str(path), *named)
    assert len(line) < 1_000


def test_a_column_declared_but_missing_from_the_table_names_silos_yaml(cli, tmp_path):
    declared = (REPO / "silos.yaml").read_text().replace("    created_at: public\n", "    created_at: public\n    nickname: public\n", 1)
    silos = tmp_path / "silos.yaml"
    silos.write_text(declared)
    (tmp_path / "policies.yaml").write_text((REPO / "policies.yaml").read_text())
    one_line_error(*cli("--silos", str(silos), "query", "SELECT nickname FROM sg_lake.customers", "--purpose", "analytics"),
                   "'nickname' is declared for sg_lake.customers", str(silos), "no such column")


def test_formats_read_back_equal_and_only_the_table_rounds(cli, tmp_path):
    files = {fmt: tmp_path / f"result.{fmt}" for fmt in ("csv", "json", "parquet")}
    for fmt, path in files.items():
        code, out, err = cli("query", ROWS, "--purpose", "credit_scoring", "--format", fmt, "--output", str(path))
        assert (code, out, err) == (0, "", ""), err
    expected = pq.read_table(files["parquet"])
    assert expected.num_rows > 100 and pa.types.is_floating(expected.schema.field("income_share").type)
    from_csv = pacsv.read_csv(files["csv"], convert_options=pacsv.ConvertOptions(column_types=expected.schema))
    from_json = pajson.read_json(files["json"], parse_options=pajson.ParseOptions(explicit_schema=expected.schema))
    assert from_csv.equals(expected) and from_json.equals(expected)
    assert json.loads(files["json"].read_text().splitlines()[0])["income_share"] == expected.column("income_share")[0].as_py()

    code, table, _ = cli("query", ROWS, "--purpose", "credit_scoring", "--max-rows", "3")
    shares = [s for s in expected.column("income_share").to_pylist()[:3] if s is not None and not math.isclose(s, round(s, 3))]
    assert code == 0 and shares, table
    for share in shares:  # rounded on the terminal, whole in the files
        assert repr(share) not in table and f"{share:.6g}" in table
    assert "3 rows shown; the query has more, not fetched" in table


def test_max_rows_limits_what_leaves_the_silo(cli, tmp_path):
    out = tmp_path / "five.csv"
    code, _, err = cli("query", "SELECT customer_id, home_region FROM sg_lake.customers", "--purpose", "analytics",
                       "--format", "csv", "--output", str(out), "--max-rows", "5")
    assert code == 0 and "5 rows written; the query has more" in err
    assert len(out.read_text().splitlines()) == 1 + 5
    [entry] = [e for e in cli.ledger().entries(chain="sg_lake") if e["operation"] == "query"]
    assert entry["rows"] == 6, "the silo sent the rows asked for and one to tell there are more, not its whole table"

    code, out_text, _ = cli("query", "SELECT home_region FROM sg_lake.customers LIMIT 2", "--purpose", "analytics", "--max-rows", "5")
    assert code == 0 and out_text.rstrip().endswith("2 rows"), "a smaller LIMIT of the query's own is kept"


def test_the_client_chooses_the_identity_and_a_refused_purpose_is_ledgered(cli, local_deployment, monkeypatch):
    count = "SELECT count(*) AS n FROM sg_lake.customers"
    one_line_error(*cli("query", count, "--purpose", "aml", "--client", "analyst"), "client 'analyst' may not declare purpose 'aml'")
    refusals = [e for e in cli.ledger().entries(chain="sg_lake") if e["decision"] == "denied"]
    assert [(e["requester"], e["purpose"], e["error"]) for e in refusals] == [("analyst", "aml", "FORBIDDEN_PURPOSE")]

    assert cli("query", count, "--purpose", "aml")[0] == 0, "the coordinator holds aml"
    monkeypatch.setenv("FEDLAKE_TOKEN", local_secret(local_deployment.home, "token.analyst"))
    assert cli("query", count, "--purpose", "analytics")[0] == 0
    queries = [(e["requester"], e["purpose"]) for e in cli.ledger().entries(chain="sg_lake") if e["operation"] == "query"]
    assert queries == [("coordinator", "aml"), ("analyst", "analytics")]


def test_audit_show_prints_entries_readably(cli):
    cli("query", "SELECT count(*) FROM sg_lake.customers", "--purpose", "aml", "--client", "analyst")
    code, out, _ = cli("audit", "show", "--last", "1")
    assert code == 0
    assert re.match(r"#\d+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  chain sg_lake #1\n", out), out
    assert "analyst — declare_purpose for aml, sg_lake to EU: DENIED" in out and "refused: agent sg_lake" in out
    seq = int(out[1:out.index(" ")])
    assert cli("audit", "show", str(seq))[1] == out
    one_line_error(*cli("audit", "show", str(seq + 100)), f"no audit entry {seq + 100}")


def test_policy_explain_takes_cross_silo_sql(cli):
    join = ("SELECT s.home_region, count(*) AS n FROM sg_lake.customers s JOIN us_lake.accounts a "
            "ON s.customer_id = a.customer_id GROUP BY s.home_region")
    code, out, err = cli("policy", "explain", join, "--purpose", "analytics", "--to", "EU")
    assert code == 0, err
    assert re.search(r"^fragment \w+ \(sg_lake\): ", out, re.M) and re.search(r"^fragment \w+ \(us_lake\): ", out, re.M)
    assert "silo sg_lake -> EU" in out and "silo us_lake -> EU" in out and "PSEUDONYMIZE" in out
    assert "combined at the destination (EU)" in out

    memo = ("SELECT s.home_region, max(t.memo) AS memo FROM sg_lake.customers s JOIN us_lake.accounts a "
            "ON s.customer_id = a.customer_id JOIN us_lake.transactions t ON t.account_id = a.account_id GROUP BY s.home_region")
    code, out, _ = cli("policy", "explain", memo, "--purpose", "analytics", "--to", "EU")
    assert code == 1 and "DENIED" in out and "memo" in out and "classifications.free_text[0]" in out


def test_a_wrong_lake_path_is_said_and_nothing_is_created(cli, tmp_path, monkeypatch):
    from fedlake.silos.parquet import ParquetConnector

    home = tmp_path / "not-the-data-folder"
    monkeypatch.setenv("FEDLAKE_HOME", str(home))
    one_line_error(*cli("query", "SELECT count(*) FROM sg_lake.customers", "--purpose", "analytics"),
                   "lake folder", str(home), "does not exist", "nothing was created")
    assert not home.exists()
    assert ParquetConnector("sg_lake", "SG", home / "sg_lake").list_tables() == [] and not home.exists(), \
        "opening a lake makes no folder; its first write does"

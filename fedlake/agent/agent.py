"""The silo agent: the one way into a silo. Runs next to it, through the egress gate and the ledger.

The same class serves in-process (the local deployment, fast tests) and behind the Arrow Flight
server (prod): both authenticate a bearer token to an identity, check the declared purpose against
what that identity may declare, plan every request through the gate, and ledger every decision.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fedlake.agent.gate import SUBJECTS_COLUMN, DerivedColumn, EgressDenied, EgressGate, EgressPlan
from fedlake.agent.lineage import LineageError, SourceUse, analyse, parse_query
from fedlake.agent.peers import CAPABILITY_SCHEME, Transfer, TransferRefused, Transfers
from fedlake.agent.placed import explain_placed_residual, run_placed_residual
from fedlake.agent.pii import pii_scan
from fedlake.arrow_types import arrow_width, sql_type
from fedlake.audit import Ledger
from fedlake.bloom import BloomFilter, key_family
from fedlake.catalog import SiloSpec
from fedlake.errors import FedlakeError
from fedlake.policy.model import Policy
from fedlake.silos.base import Connector, EgressCounter, check_table_name, counted


class Unauthenticated(FedlakeError):
    """No token, or a token no client holds."""


class Forbidden(FedlakeError):
    """A known client asked for something it may not (a purpose it may not declare)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated identity: everything here comes from the token, nothing from the request."""

    identity: str
    purposes: tuple[str, ...]
    region: str = ""  # where the caller's results go
    roles: tuple[str, ...] = ()
    transfer: str | None = None  # a peer agent holding a transfer capability, not a client


SEMIJOIN_WAIT_SECONDS = 600.0
SEMIJOIN_BUFFER_BYTES = 256 * 1024 * 1024  # what a fragment may compute ahead of its keys


class _Mailbox:
    """Semi-join keys by id: they may arrive before or after the fragment that waits for them starts."""

    def __init__(self, capacity: int = 1024):
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[threading.Event, list]] = {}
        self._capacity = capacity

    def _slot(self, key: str) -> tuple[threading.Event, list]:
        with self._lock:
            if key not in self._slots and len(self._slots) >= self._capacity:
                self._slots.pop(next(iter(self._slots)))  # keys nobody came for
            return self._slots.setdefault(key, (threading.Event(), []))

    def arrived(self, key: str) -> bool:
        return self._slot(key)[0].is_set()

    def put(self, key: str, value: Any) -> None:
        event, box = self._slot(key)
        box.append(value)
        event.set()

    def take(self, key: str, timeout: float, silo: str) -> Any:
        event, box = self._slot(key)
        if not event.wait(timeout):
            raise FedlakeError(f"agent {silo}: the semi-join keys '{key}' did not arrive within {timeout:.0f} s")
        with self._lock:
            self._slots.pop(key, None)
        return box[0]


ActionHandler = Callable[[Caller, dict[str, Any]], Any]


class SiloAgent:
    def __init__(
        self,
        spec: SiloSpec,
        connector: Connector,
        policy: Policy,
        ledger: Ledger,
        key: bytes,
        tokens: dict[str, str],
        peer_ca: bytes | None = None,
    ):
        self.spec = spec
        self.tokens = tokens  # bearer token -> client identity
        self.connector = connector
        self.policy = policy
        self.ledger = ledger
        self.gate = EgressGate(spec, policy, key)
        self.egress = EgressCounter()  # what left through this agent, after the gate
        self.semijoin_keys = _Mailbox()
        self.transfers = Transfers()  # capabilities handed out for fragments bound for a peer agent
        self.peer_ca = peer_ca  # the CA that signs peer agents' certificates
        self.residual_reports: dict[str, dict[str, Any]] = {}  # what each residual placed here received
        self._actions: dict[str, ActionHandler] = {}
        for name, handler in {
            "list_tables": self._list_tables,
            "schema": self._schema,
            "row_count": self._row_count,
            "statistics": self._statistics,
            "materialize": self._materialize,
            "pii_scan": self._pii_scan,
            "egress": self._egress,
            "explain": self._explain,
            "watermark": self._watermark,
            "semijoin_keys": self._semijoin_keys,
            "prepare_transfer": self._prepare_transfer,
            "residual_report": self._residual_report,
            "explain_residual": lambda caller, body: explain_placed_residual(self, caller, body),
        }.items():
            self.register_action(name, handler)

    # -- who is calling -------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise Unauthenticated(f"agent {self.spec.name}: no bearer token")
        identity = self.tokens.get(token)
        if identity is None:
            raise Unauthenticated(f"agent {self.spec.name}: invalid bearer token")
        client = self.policy.clients[identity]
        return Caller(identity, client.purposes, client.region, client.roles)

    def authenticate_transfer(self, ticket: str | None) -> Caller:
        """A peer agent presenting a transfer capability: it may redeem that transfer, nothing else."""
        try:
            transfer = self.transfers.get(ticket or "", self.spec.name)
        except TransferRefused as exc:
            raise Unauthenticated(str(exc)) from None
        return Caller(transfer.caller.identity, (transfer.purpose,), transfer.destination, (), transfer=ticket)

    def authenticate_header(self, value: str | None) -> Caller:
        """`Bearer <token>` for clients, `Capability <ticket>` for peer agents."""
        if value and value.startswith(CAPABILITY_SCHEME):
            return self.authenticate_transfer(value[len(CAPABILITY_SCHEME):])
        return self.authenticate(value[len("Bearer "):] if value and value.startswith("Bearer ") else None)

    def check_role(self, caller: Caller, role: str, what: str) -> None:
        if role not in caller.roles:
            raise Forbidden(
                f"agent {self.spec.name}: client '{caller.identity}' may not {what}: it lacks the role '{role}' "
                f"({self.policy.path}: clients.{caller.identity}.roles)"
            )

    def check_purpose(self, caller: Caller, purpose: str) -> None:
        if purpose not in caller.purposes:
            raise Forbidden(
                f"agent {self.spec.name}: client '{caller.identity}' may not declare purpose '{purpose}' "
                f"(may declare: {', '.join(caller.purposes) or 'none'}; {self.policy.path}: clients.{caller.identity})"
            )

    # -- actions --------------------------------------------------------------------------------

    def register_action(self, name: str, handler: ActionHandler) -> None:
        """Further operations (data-quality validation, training rounds) plug in here."""
        self._actions[name] = handler

    def action_names(self) -> list[str]:
        return sorted(self._actions)

    def action(self, caller: Caller, name: str, body: dict[str, Any]) -> Any:
        if caller.transfer and name != "semijoin_keys":
            raise Forbidden(f"agent {self.spec.name}: a transfer capability does not allow action '{name}'")
        if name not in self._actions:
            raise FedlakeError(f"agent {self.spec.name}: unknown action '{name}' (known: {', '.join(self.action_names())})")
        return self._actions[name](caller, body)

    # -- queries through the gate ---------------------------------------------------------------

    def tables_for(self, sql: str) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, DerivedColumn]]]:
        """The silo's schema as the gate needs it: the tables the fragment names, with their columns,
        and for tables fedlake made here, the base columns each of their columns was made of."""
        tree = parse_query(sql)
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        names = {t.name for t in tree.find_all(exp.Table)} - ctes
        present = set(self.connector.list_tables())
        schema: dict[str, dict[str, str]] = {}
        derived: dict[str, dict[str, DerivedColumn]] = {}
        for name in names:
            if name not in present:
                raise LineageError(f"silo {self.spec.name} has no table '{name}' (tables: {', '.join(sorted(present))})")
            schema[name] = {f.name: sql_type(f.type) for f in self.connector.schema(name)}
            if name not in self.spec.tables:
                lineage = (self.connector.annotations(name) or {}).get("lineage", {})
                derived[name] = {
                    column: DerivedColumn(tuple(SourceUse(u["table"], u["column"], u["mode"]) for u in uses))
                    for column, uses in lineage.items()
                }
        return schema, derived

    def plan(self, caller: Caller, sql: str, purpose: str, destination: str) -> EgressPlan:
        """Decide a fragment; a refusal is ledgered before it is raised."""
        if caller.transfer:
            raise Forbidden(f"agent {self.spec.name}: a transfer capability only redeems the fragment it was made for")
        self.check_purpose(caller, purpose)
        try:
            schema, derived = self.tables_for(sql)
            return self.gate.plan(sql, caller.identity, purpose, destination, schema, derived)
        except (EgressDenied, LineageError) as exc:
            columns = [c.as_dict() for c in exc.plan.columns] if isinstance(exc, EgressDenied) and exc.plan else []
            self.ledger.record(
                requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=destination,
                operation="query", fragment=sql, columns=columns, decision="denied",
            )
            raise

    def planned_schema(self, plan: EgressPlan) -> pa.Schema:
        """The schema the plan will send, without running it over any row."""
        empty = self.connector.execute(f"SELECT * FROM ({plan.sql}) AS q LIMIT 0")
        schema, _ = self.gate.apply(plan, empty.schema, iter(()))
        return schema

    def estimate(self, plan: EgressPlan, schema: pa.Schema | None = None) -> tuple[int, int]:
        """Rows and bytes the plan would send: rows from the silo engine's own planner (its
        statistics), else the largest table it reads; bytes from the width of what leaves."""
        rows = self.connector.estimate_rows(plan.sql)
        if rows is None:
            tables = {t.name for t in parse_query(plan.sql).find_all(exp.Table)} & set(self.connector.list_tables())
            rows = max((self.connector.row_count(t) for t in tables), default=1)
        schema = schema if schema is not None else self.planned_schema(plan)
        return rows, rows * sum(arrow_width(f.type) for f in schema)

    def gated(self, caller: Caller, plan: EgressPlan) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run a planned fragment inside the silo and rewrite what it returns through the gate."""
        if plan.k and plan.small_groups == "refuse":
            self._refuse_small_groups(caller, plan)
        reader = self.connector.execute(plan.sql)
        return self.gate.apply(plan, reader.schema, iter(reader))

    def stream(
        self,
        caller: Caller,
        sql: str,
        purpose: str,
        destination: str,
        keep: list[dict[str, Any]] | None = None,
        note: str = "",
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Plan, run inside the silo, rewrite through the gate, count and ledger what leaves.

        `keep` lists semi-joins, [{"column": an output column, "keys": an id}]: the fragment runs at
        once and its gated batches wait here until a Bloom filter of join keys arrives under each id
        (the `semijoin_keys` action); then only rows whose keys, as they leave (pseudonymized or
        not), may be among them are sent. `note` goes into the ledger entry with the fragment."""
        plan = self.plan(caller, sql, purpose, destination)
        self._check_semijoins(plan, keep or [])
        schema, batches = self.gated(caller, plan)
        decision = "rewritten" if any(c.action != "allow" for c in plan.columns) else "allowed"
        fragment = [sql, *([note] if note else [])]
        if keep:
            batches = self._semijoined(batches, schema, [(k["column"], str(k.get("keys"))) for k in keep], fragment)

        def record(rows: int, nbytes: int) -> None:
            self.ledger.record(
                requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=destination,
                operation="query", fragment="\n".join(fragment), columns=[c.as_dict() for c in plan.columns],
                decision=decision, rows=rows, nbytes=nbytes,
            )

        return schema, counted(batches, record, each=self.egress.add)

    # -- residuals placed in a silo, and the transfers that feed them ---------------------------

    def _prepare_transfer(self, caller: Caller, body: dict[str, Any]) -> dict[str, str]:
        """A fragment bound for the agent of silo `receiver` (in region `destination`), where a residual
        whose result goes to the governed zone (region `final`) will read it. Allowed only where the
        policy treats the fragment there exactly as it does at the governed zone, so that the
        residual's result holds nothing the governed zone could not have received itself."""
        sql, purpose, destination, final = body["sql"], body["purpose"], body["destination"], body["final"]
        keep = body.get("keep") or []
        there = self.plan(caller, sql, purpose, destination)
        if destination != final:
            here = self.plan(caller, sql, purpose, final)
            actions = {c.output: c.action for c in here.columns}
            differ = [c.output for c in there.columns if actions.get(c.output) != c.action]
            if differ or there.k != here.k:
                self.ledger.record(
                    requester=caller.identity, purpose=purpose, silo=self.spec.name, destination=destination,
                    operation="query", fragment=sql, columns=[c.as_dict() for c in there.columns], decision="denied",
                )
                raise EgressDenied(there, f"egress from {self.spec.name} to {body['receiver']} ({destination}) denied: "
                                   f"the policy treats {', '.join(differ) or 'its small groups'} there otherwise than at "
                                   f"the governed zone ({final}) [rule {self.policy.path}]")
        self._check_semijoins(there, keep)
        transfer = Transfer(caller, sql, purpose, destination, str(body["receiver"]), keep)
        return {"ticket": self.transfers.add(transfer)}

    def redeem(self, caller: Caller) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The stream a peer agent's capability was made for, once, planned and ledgered as any fragment."""
        if not caller.transfer:
            raise Forbidden(f"agent {self.spec.name}: only a transfer capability redeems a transfer")
        try:
            transfer = self.transfers.take(caller.transfer, self.spec.name)
        except TransferRefused as exc:
            raise Unauthenticated(str(exc)) from None
        return self.stream(
            transfer.caller, transfer.sql, transfer.purpose, transfer.destination, transfer.keep or None,
            note=f"-- sent to the agent of silo {transfer.receiver}, for a residual placed there",
        )

    def residual(self, caller: Caller, request: dict[str, Any]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run a residual the planner placed in this silo; only its result leaves, for the governed zone."""
        return run_placed_residual(self, caller, request)

    def _residual_report(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """What a residual placed here received (rows, bytes per fragment) and the filters it sent."""
        report = self.residual_reports.get(str(body["id"]))
        if report is None or report["requester"] != caller.identity:
            raise FedlakeError(f"agent {self.spec.name}: no residual '{body['id']}' of yours ran here")
        return report

    def _check_semijoins(self, plan: EgressPlan, keep: list[Any]) -> None:
        """Every semi-join a fragment is to wait for names a column the fragment returns."""
        outputs = {c.output for c in plan.columns}
        for semijoin in keep:
            if not isinstance(semijoin, dict) or semijoin.get("column") not in outputs:
                column = semijoin.get("column") if isinstance(semijoin, dict) else semijoin
                raise FedlakeError(f"agent {self.spec.name}: a semi-join names column '{column}', which the fragment does not return")

    def _semijoined(
        self, batches: Iterator[pa.RecordBatch], schema: pa.Schema, keep: list[tuple[str, str]], fragment: list[str]
    ) -> Iterator[pa.RecordBatch]:
        """Compute and gate while the keys are on their way (holding at most SEMIJOIN_BUFFER_BYTES);
        then send only the rows that may join."""
        buffered, held = [], 0
        for batch in batches:
            buffered.append(batch)
            held += batch.nbytes
            if held > SEMIJOIN_BUFFER_BYTES or all(self.semijoin_keys.arrived(keys) for _, keys in keep):
                break
        filters = []
        for column, keys in keep:
            raw = self.semijoin_keys.take(keys, SEMIJOIN_WAIT_SECONDS, self.spec.name)
            bloom = BloomFilter.from_dict(raw) if raw is not None else None
            if bloom is not None and key_family(schema.field(column).type) == bloom.family:
                fragment.append(f"-- semi-join: only rows whose {column} may be one of {bloom.keys} keys "
                                f"(Bloom filter, {bloom.nbytes} bytes)")
                filters.append((column, bloom))
        for batch in itertools.chain(buffered, batches):
            for column, bloom in filters:
                batch = batch.filter(bloom.may_contain(batch.column(column)))
            yield batch

    def _semijoin_keys(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """The keys a running fragment waits for, or None: send it all."""
        if caller.transfer and str(body["id"]) not in self.transfers.get(caller.transfer, self.spec.name).keys_ids:
            raise Forbidden(f"agent {self.spec.name}: the transfer capability does not cover semi-join keys '{body['id']}'")
        raw = body.get("filter")
        if raw is not None:
            BloomFilter.from_dict(raw)
        self.semijoin_keys.put(str(body["id"]), raw)
        return {"id": body["id"]}

    def _refuse_small_groups(self, caller: Caller, plan: EgressPlan) -> None:
        smallest = self.connector.execute(f'SELECT min("{SUBJECTS_COLUMN}") AS m FROM ({plan.sql}) AS q').read_all()
        value = smallest.column(0)[0].as_py()
        if value is not None and value < plan.k:
            self.ledger.record(
                requester=caller.identity, purpose=plan.purpose, silo=self.spec.name, destination=plan.destination,
                operation="query", fragment=plan.fragment, columns=[c.as_dict() for c in plan.columns], decision="denied",
            )
            raise EgressDenied(plan, f"egress from {self.spec.name} denied: a group has {value} distinct subjects, under "
                               f"k={plan.k} [rule {self.policy.path}: aggregate.small_groups = refuse]")

    # -- built-in actions -----------------------------------------------------------------------

    def _list_tables(self, caller: Caller, body: dict[str, Any]) -> list[str]:
        return self.connector.list_tables()

    def _schema(self, caller: Caller, body: dict[str, Any]) -> list[list[str]]:
        """[name, Arrow type, the SQL type the planner qualifies the column as] per column."""
        return [[f.name, str(f.type), sql_type(f.type)] for f in self.connector.schema(body["table"])]

    def _row_count(self, caller: Caller, body: dict[str, Any]) -> int:
        return self.connector.row_count(body["table"])

    def _statistics(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """Statistics computed in place; a column's min and max leave only where the policy lets
        its values leave as they are."""
        purpose, destination = body["purpose"], body["destination"]
        self.check_purpose(caller, purpose)
        table = body["table"]
        stats = self.connector.statistics(table)
        columns = []
        for c in stats.columns:
            revealable = table in self.spec.tables and c.name in self.spec.tables[table].columns and (
                self.policy.decide(self.spec.name, table, c.name, destination, purpose).action == "allow"
            )
            columns.append(
                {"name": c.name, "type": c.type, "distinct": c.distinct, "null_fraction": c.null_fraction,
                 "min": c.min if revealable else None, "max": c.max if revealable else None}
            )
        return {"table": table, "rows": stats.rows, "bytes": stats.bytes, "columns": columns}

    def _materialize(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """Materialize inside the silo: nothing leaves, so no egress rule applies, but the new
        table remembers the base columns each of its columns was made of, for the gate later."""
        table, sql = check_table_name(body["table"]), body["sql"]
        if table in self.spec.tables:
            raise FedlakeError(f"{self.spec.name}.{table} is a source table declared in {self.spec.source_file}; it may not be replaced")
        schema, derived = self.tables_for(sql)
        lineage = analyse(sql, schema)
        annotations = {"lineage": {}, "sql": sql, "by": caller.identity}
        for column in lineage.columns:
            uses = self.gate.base_uses(column.uses, derived)
            annotations["lineage"][column.name] = [{"table": u.table, "column": u.column, "mode": u.mode} for u in uses]
        made = self.connector.materialize(table, sql, annotations)
        self.ledger.record(
            requester=caller.identity, purpose=body.get("purpose", "materialize"), silo=self.spec.name,
            destination=self.spec.region, operation="materialize", fragment=sql,
            columns=[{"output": f.name} for f in made.schema], decision="in_silo", rows=0, nbytes=0,
        )
        return {"silo": self.spec.name, "table": table, "columns": [[f.name, str(f.type)] for f in made.schema],
                "rows": made.rows, "bytes": made.bytes}

    def _pii_scan(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        return pii_scan(self.connector, self.spec, body["table"])

    def _explain(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """The gate's decision for a fragment, without running it (nothing leaves, nothing is ledgered)."""
        self.check_purpose(caller, body["purpose"])
        schema, derived = self.tables_for(body["sql"])
        try:
            plan = self.gate.plan(body["sql"], caller.identity, body["purpose"], body["destination"], schema, derived)
        except EgressDenied as exc:
            return {"denied": str(exc), "columns": [c.as_dict() for c in exc.plan.columns] if exc.plan else []}
        return {"denied": None, "sql": plan.sql, "k": plan.k, "columns": [c.as_dict() for c in plan.columns]}

    def _watermark(self, caller: Caller, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each declared table's high-water mark: its row count and its latest timestamp, computed in
        place. Only these two numbers leave; a new-data sensor compares them tick to tick."""
        marks = {}
        present = set(self.connector.list_tables())
        for table in self.spec.tables:
            if table not in present:
                continue
            schema = self.connector.schema(table)
            stamp = next((f.name for f in schema if pa.types.is_timestamp(f.type)), None)
            latest = f', CAST(max("{stamp}") AS VARCHAR) AS latest' if stamp else ", NULL AS latest"
            row = self.connector.execute(f'SELECT count(*) AS n{latest} FROM "{table}"').read_all().to_pylist()[0]
            marks[table] = {"rows": int(row["n"]), "latest": row["latest"]}
        return marks

    def _egress(self, caller: Caller, body: dict[str, Any]) -> dict[str, int]:
        rows, nbytes = self.egress.snapshot()
        return {"rows": rows, "bytes": nbytes}

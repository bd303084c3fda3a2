"""The coordinator <-> agent protocol: typed, versioned messages and their wire forms.

A fragment is planned once. The first request (`PlanFragment`) makes the agent bind masks, run the
gate and, if asked, estimate; the answer (`PlannedFragment`) carries the decisions and a ticket
naming the stored plan. Every later step redeems that ticket: semi-join keys are attached to it
(`KeysFor`), then the rows are fetched (`Redeem`). Over Flight, GetFlightInfo plans, DoPut attaches
keys, DoGet redeems; in-process the same messages are passed as objects.

Every wire form is JSON with a version and a kind, read back into its dataclass with every field
checked, so a malformed message gets one line naming what is wrong, never a KeyError deep inside.
"""

from __future__ import annotations

import base64
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import pyarrow as pa

from fedlake.errors import FedlakeError

VERSION = 2

M = TypeVar("M", bound="Message")


class ProtocolError(FedlakeError):
    """A message that is not one this agent speaks: wrong version, kind or field."""


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@dataclass(frozen=True)
class Message:
    """A protocol message: `to_wire()` and `Kind.from_wire(raw)` round-trip it."""

    kind: ClassVar[str] = ""

    def to_wire(self) -> bytes:
        return json.dumps({"v": VERSION, "kind": self.kind, **self._fields()}, default=str).encode()

    def _fields(self) -> dict[str, Any]:
        return asdict(self)

    def body(self) -> dict[str, Any]:
        """The fields without the envelope, for a message carried inside another's body."""
        return self._fields()

    @classmethod
    def from_wire(cls: type[M], raw: bytes | str) -> M:
        body = _envelope(raw, cls.kind)
        return cls.from_fields(body)

    @classmethod
    def from_fields(cls: type[M], body: dict[str, Any]) -> M:
        values = {}
        for f in fields(cls):
            if f.name not in body:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ProtocolError(f"a {cls.kind} message needs '{f.name}'")
                continue
            values[f.name] = body[f.name]
        try:
            return cls(**values)._checked()
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"a {cls.kind} message is malformed: {exc}") from None

    def _checked(self: M) -> M:
        """Every field of a plain annotated type is checked; a message reads others in from_fields."""
        for f in fields(self):
            value, annotation = getattr(self, f.name), str(f.type)
            expected = _PLAIN_TYPES.get(annotation)
            if expected and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
                raise ProtocolError(f"a {self.kind} message's '{f.name}' is {annotation}, not {type(value).__name__}")
            if annotation == "list[str]" and not all(isinstance(v, str) for v in value):
                raise ProtocolError(f"a {self.kind} message's '{f.name}' must list names")
            if annotation == "dict[str, str]" and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ProtocolError(f"a {self.kind} message's '{f.name}' must map names to text")
        return self


_PLAIN_TYPES = {"str": str, "int": int, "bool": bool, "list[str]": list, "dict[str, str]": dict, "list[dict[str, str]]": list}


def kind_of(raw: bytes | str) -> str:
    """The kind of a wire message, to dispatch on (after its version is checked)."""
    return str(_envelope(raw, None)["kind"])


def _envelope(raw: bytes | str, kind: str | None) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("a protocol message is JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("a protocol message is a JSON object")
    if body.get("v") != VERSION:
        raise ProtocolError(f"protocol version {body.get('v')!r} is not spoken here (this agent speaks {VERSION})")
    if kind is not None and body.get("kind") != kind:
        raise ProtocolError(f"expected a {kind} message, got {body.get('kind')!r}")
    return body


@dataclass(frozen=True)
class ColumnVerdict:
    """The gate's decision on one output column, and the masks and rules it comes from."""

    output: str
    action: str  # allow | pseudonymize | generalize | aggregate (DP) | deny
    sources: tuple[str, ...]  # silo.table.column
    rules: tuple[str, ...]
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"output": self.output, "action": self.action, "sources": list(self.sources), "rules": list(self.rules),
                "reason": self.reason}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnVerdict:
        try:
            return cls(str(raw["output"]), str(raw["action"]), tuple(raw.get("sources", ())), tuple(raw.get("rules", ())),
                       str(raw.get("reason", "")))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"a column verdict needs {exc}") from None


# -- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableInfo:
    """A table as a planner sees it: column SQL types and, if asked with a purpose, its rows and the
    distinct values of the columns the caller's masks let out as they are or as pseudonyms."""

    columns: dict[str, str]
    rows: int | None = None
    distinct: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, raw: dict[str, Any]) -> TableInfo:
        try:
            return cls({str(k): str(v) for k, v in raw["columns"].items()}, _int(raw.get("rows")),
                       {str(k): int(v) for k, v in (raw.get("distinct") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"a table's description is malformed: {exc!r}") from None


@dataclass(frozen=True)
class PlanFragment(Message):
    """Plan a fragment for the caller's own region: decide it, store the plan, estimate if asked."""

    kind: ClassVar[str] = "plan"
    sql: str
    purpose: str
    region: str = ""  # if named, it must be the caller's own: the identity decides where results go
    estimate: bool = True


@dataclass(frozen=True)
class Decision:
    """What the gate decided for a fragment and a region: per column, and the statement it runs."""

    columns: tuple[ColumnVerdict, ...] = ()
    denied: str = ""  # the refusal, naming the column and the rule
    sql_in_silo: str = ""
    masks: dict[str, str] = field(default_factory=dict)  # table.column -> action, for every column read
    dp: bool = False

    def actions(self) -> dict[str, str]:
        """{output column: action}, or nothing if refused."""
        return {} if self.denied else {c.output: c.action for c in self.columns}

    def as_fields(self) -> dict[str, Any]:
        return {"columns": [c.as_dict() for c in self.columns], "denied": self.denied, "sql_in_silo": self.sql_in_silo,
                "masks": self.masks, "dp": self.dp}

    @classmethod
    def from_fields(cls, raw: dict[str, Any]) -> Decision:
        columns = raw.get("columns", [])
        if not isinstance(columns, list):
            raise ProtocolError("a decision's columns are a list")
        return cls(tuple(ColumnVerdict.from_dict(c) for c in columns), str(raw.get("denied") or ""),
                   str(raw.get("sql_in_silo") or ""), dict(raw.get("masks") or {}), bool(raw.get("dp")))


@dataclass(frozen=True)
class PlannedFragment(Message):
    """A planned fragment: the ticket that redeems it, the decisions, what it sends and its estimate."""

    kind: ClassVar[str] = "planned"
    ticket: str
    silo: str
    decision: Decision
    schema: pa.Schema
    rows: int | None = None
    bytes: int | None = None

    def _fields(self) -> dict[str, Any]:
        return {"ticket": self.ticket, "silo": self.silo, "decision": self.decision.as_fields(),
                "schema": schema_to_text(self.schema), "rows": self.rows, "bytes": self.bytes}

    @classmethod
    def from_fields(cls, body: dict[str, Any]) -> PlannedFragment:
        try:
            return cls(str(body["ticket"]), str(body["silo"]), Decision.from_fields(body["decision"]),
                       schema_from_text(body["schema"]), _int(body.get("rows")), _int(body.get("bytes")))
        except KeyError as exc:
            raise ProtocolError(f"a planned message needs {exc}") from None


@dataclass(frozen=True)
class ExplainFragment(Message):
    """The gate's decision for a fragment and any region (what the policy says is no secret)."""

    kind: ClassVar[str] = "explain"
    sql: str
    purpose: str
    region: str = ""


# -- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeysFor(Message):
    """Semi-join keys for a planned fragment: only its rows whose `column` may be one of them go.
    Over Flight the keys travel as the DoPut stream that this message describes."""

    kind: ClassVar[str] = "keys"
    ticket: str
    column: str
    condition: str = ""


@dataclass(frozen=True)
class Redeem(Message):
    """Run a planned fragment and stream its rows (once)."""

    kind: ClassVar[str] = "redeem"
    ticket: str


@dataclass(frozen=True)
class PrepareTransfer(Message):
    """A one-time capability for a fragment bound for silo `receiver`'s agent, for a residual placed
    there whose result goes to the coordinator's own region."""

    kind: ClassVar[str] = "transfer"
    sql: str
    purpose: str
    receiver: str


@dataclass(frozen=True)
class RedeemTransfer(Message):
    kind: ClassVar[str] = "redeem_transfer"
    ticket: str


@dataclass(frozen=True)
class LocalFragment:
    name: str
    sql: str


@dataclass(frozen=True)
class Import:
    """A fragment another silo's agent prepared for this one, under a one-time capability."""

    name: str
    silo: str
    location: str
    ticket: str


@dataclass(frozen=True)
class ResidualSemiJoin:
    condition: str
    probe: str  # an import's name
    column: str  # the probe's column
    build: tuple[tuple[str, str], ...]  # (fragment name, column) whose keys it takes
    limit: float  # the most bytes the keys may cost
    keys_sql: str = ""  # if set: a query over fragments whose one column is exactly the keys
    reads: tuple[str, ...] = ()  # the fragments keys_sql reads

    @property
    def sources(self) -> set[str]:
        return {name for name, _ in self.build} | set(self.reads)


@dataclass(frozen=True)
class RunResidual(Message):
    """A residual the coordinator placed in this silo, over its local fragments and its imports."""

    kind: ClassVar[str] = "residual"
    id: str
    purpose: str
    sql: str
    local: tuple[LocalFragment, ...] = ()
    imports: tuple[Import, ...] = ()
    semijoins: tuple[ResidualSemiJoin, ...] = ()

    @classmethod
    def from_fields(cls, body: dict[str, Any]) -> RunResidual:
        try:
            return cls(
                str(body["id"]), str(body["purpose"]), str(body["sql"]),
                tuple(LocalFragment(str(x["name"]), str(x["sql"])) for x in body.get("local", ())),
                tuple(Import(str(x["name"]), str(x["silo"]), str(x["location"]), str(x["ticket"])) for x in body.get("imports", ())),
                tuple(ResidualSemiJoin(str(x["condition"]), str(x["probe"]), str(x["column"]),
                                       tuple((str(n), str(c)) for n, c in x["build"]), float(x["limit"]),
                                       str(x.get("keys_sql", "")), tuple(str(r) for r in x.get("reads", ())))
                      for x in body.get("semijoins", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a residual message is malformed: {exc!r}") from None


@dataclass(frozen=True)
class FragmentReport:
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class ResidualReport(Message):
    """What a residual placed in a silo received per fragment, the keys it sent, and its notes."""

    kind: ClassVar[str] = "residual_report"
    requester: str
    fragments: dict[str, FragmentReport] = field(default_factory=dict)
    filters: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # probe -> condition -> (keys, bytes)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, body: dict[str, Any]) -> ResidualReport:
        try:
            return cls(
                str(body["requester"]),
                {k: FragmentReport(**v) for k, v in body.get("fragments", {}).items()},
                {p: {c: (int(k), int(b)) for c, (k, b) in f.items()} for p, f in body.get("filters", {}).items()},
                {k: [str(n) for n in v] for k, v in body.get("notes", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a residual report is malformed: {exc!r}") from None


def _int(value: Any) -> int | None:
    return None if value is None or int(value) < 0 else int(value)

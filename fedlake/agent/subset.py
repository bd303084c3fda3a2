"""The SQL an agent accepts: a documented subset of DuckDB's dialect, checked before anything is
planned or run. Defence in depth behind the masks: a construct outside the subset is refused in one
line naming it, so DuckDB-only syntax (COLUMNS, positional or whole-row references, table functions,
`error()`) never reaches the engine.

Accepted: one query (SELECT, WITH, UNION/INTERSECT/EXCEPT without BY NAME, subqueries) over the
silo's own tables by plain name; joins; WHERE, GROUP BY, HAVING, QUALIFY, ORDER BY; LIMIT and
OFFSET as literal numbers; the expression nodes and functions listed below.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import ParseError

from fedlake.errors import FedlakeError
from fedlake.sql_text import LIMITS, SqlTooComplex, parse_sql

MAX_SQL_CHARS = LIMITS.chars
MAX_NESTING = LIMITS.nesting  # parentheses deep
MAX_NODES = LIMITS.nodes
RESERVED_PREFIX = "__fl"  # names the agent gives its masked relations and bookkeeping columns


class Refused(FedlakeError):
    """A request outside the accepted SQL subset; the message names the construct."""


_STRUCTURE = (
    exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery, exp.With, exp.CTE, exp.From, exp.Join,
    exp.Where, exp.Group, exp.Having, exp.Qualify, exp.Order, exp.Ordered, exp.Limit, exp.Offset, exp.Distinct,
    exp.Table, exp.TableAlias, exp.Alias, exp.Identifier, exp.Column, exp.Star, exp.Window, exp.WindowSpec,
    exp.Literal, exp.Boolean, exp.Null, exp.Var, exp.DataType, exp.DataTypeParam, exp.Interval, exp.Tuple, exp.Paren,
    exp.Rollup, exp.Cube, exp.GroupingSets, exp.Grouping,
)
_OPERATORS = (
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ, exp.And, exp.Or, exp.Not,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Exists, exp.Neg, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.IntDiv, exp.Mod, exp.DPipe, exp.Case, exp.If, exp.Cast, exp.TryCast, exp.Coalesce, exp.Nullif,
)
_AGGREGATES = (
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Stddev, exp.StddevSamp, exp.StddevPop, exp.Variance,
    exp.VariancePop, exp.CountIf, exp.ApproxDistinct, exp.Median, exp.AnyValue, exp.LogicalOr, exp.LogicalAnd,
)
_WINDOW_FUNCTIONS = (exp.RowNumber, exp.Rank, exp.DenseRank, exp.Lag, exp.Lead, exp.FirstValue, exp.LastValue, exp.NthValue, exp.Ntile)
_SCALARS = (
    exp.Lower, exp.Upper, exp.Trim, exp.Length, exp.Substring, exp.Left, exp.Right, exp.Concat, exp.StartsWith,
    exp.StrPosition, exp.Abs, exp.Round, exp.Floor, exp.Ceil, exp.Ln, exp.Exp, exp.Sqrt, exp.Pow, exp.Sign,
    exp.Greatest, exp.Least, exp.Extract, exp.Year, exp.Month, exp.Day, exp.DayOfWeek, exp.DayOfMonth,
    exp.DayOfYear, exp.Quarter, exp.Week, exp.TimestampTrunc, exp.DateTrunc, exp.DateDiff, exp.DateAdd,
    exp.DateSub, exp.CurrentDate, exp.CurrentTimestamp, exp.DateFromParts, exp.TsOrDsToDate, exp.Date,
)
ALLOWED = _STRUCTURE + _OPERATORS + _AGGREGATES + _WINDOW_FUNCTIONS + _SCALARS
# Functions sqlglot leaves unparsed (exp.Anonymous) that are plain and safe over masked values.
ALLOWED_ANONYMOUS = {"date_diff", "datediff", "date_part", "epoch", "hour", "minute", "second", "isodow", "strlen",
                     "log10", "log2", "least", "greatest", "ifnull", "nullif", "date_add", "yearweek"}
CAST_TYPES = {getattr(exp.DataType.Type, name) for name in (
    "BOOLEAN", "TINYINT", "SMALLINT", "INT", "BIGINT", "INT128", "FLOAT", "DOUBLE", "DECIMAL", "VARCHAR", "TEXT",
    "CHAR", "DATE", "TIME", "TIMESTAMP", "TIMESTAMPNTZ", "TIMESTAMPTZ", "UBIGINT", "UINT", "USMALLINT", "UTINYINT", "INTERVAL",
) if hasattr(exp.DataType.Type, name)}
_NAMES = {exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT"}


def parse_subset(sql: str) -> exp.Query:
    """Parse a request's SQL under fedlake.sql_text's limits (size and depth, checked before and
    after parsing) and check it against the subset; raises Refused naming what is not accepted."""
    try:
        statements = parse_sql(sql)
    except SqlTooComplex as exc:
        raise Refused(str(exc)) from None
    except ParseError as exc:
        raise Refused(f"the query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1 or statements[0] is None:
        raise Refused("a request is exactly one query")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise Refused(f"only queries are accepted, not {tree.key.upper()}")
    check_subset(tree)
    return tree


def check_subset(tree: exp.Expression, bound: bool = False) -> None:
    """Every node of `tree` is in the subset; `bound`: the tree is the agent's own rewrite, whose
    masked relations carry the reserved names."""
    nodes = 0
    for node in tree.walk():
        nodes += 1
        if nodes > MAX_NODES:
            raise Refused(f"the query has more than {MAX_NODES} expression nodes")
        _check_node(node, bound)


def _check_node(node: exp.Expression, bound: bool = False) -> None:
    if isinstance(node, exp.Anonymous):
        if node.name.lower() not in ALLOWED_ANONYMOUS:
            raise Refused(f"function {node.name}() is not in the accepted SQL subset")
        return
    if not isinstance(node, ALLOWED):
        raise Refused(f"{_describe(node)} is not in the accepted SQL subset")
    if isinstance(node, exp.Identifier) and node.name.lower().startswith(RESERVED_PREFIX) and not bound:
        raise Refused(f"names starting with {RESERVED_PREFIX} are reserved for the agent ('{node.name}')")
    if isinstance(node, exp.Table):
        if node.args.get("db") or node.args.get("catalog"):
            raise Refused(f"tables are named by their plain name in the silo, not {node.sql('duckdb')}")
        if not isinstance(node.this, exp.Identifier):
            raise Refused(f"{_describe(node.this)} in FROM is not in the accepted SQL subset (table functions are refused)")
        if any(node.args.get(k) for k in ("joins", "pivots", "laterals", "version", "when", "sample")):
            raise Refused(f"table modifiers on {node.name} are not in the accepted SQL subset")
    elif isinstance(node, (exp.Union, exp.Intersect, exp.Except)) and node.args.get("by_name"):
        raise Refused(f"{_NAMES[type(node)]} BY NAME is not in the accepted SQL subset (columns match by position)")
    elif isinstance(node, exp.With) and node.args.get("recursive"):
        raise Refused("WITH RECURSIVE is not in the accepted SQL subset")
    elif isinstance(node, exp.Select) and (node.args.get("exclude") or node.args.get("into") or node.args.get("laterals")):
        raise Refused("SELECT ... EXCLUDE, INTO and LATERAL are not in the accepted SQL subset")
    elif isinstance(node, exp.Star) and (node.args.get("except_") or node.args.get("except") or node.args.get("replace") or node.args.get("rename")):
        raise Refused("* EXCLUDE / REPLACE / RENAME is not in the accepted SQL subset")
    elif isinstance(node, (exp.Limit, exp.Offset)):
        value = node.expression
        if not (isinstance(value, exp.Literal) and value.is_int):
            raise Refused(f"{node.key.upper()} takes a literal whole number here, not {value.sql('duckdb') if value else 'nothing'}")
    elif isinstance(node, (exp.Cast, exp.TryCast)):
        to = node.args.get("to")
        if not isinstance(to, exp.DataType) or to.this not in CAST_TYPES or to.expressions and to.this != exp.DataType.Type.DECIMAL:
            raise Refused(f"CAST to {to.sql('duckdb') if to else '?'} is not in the accepted SQL subset")
    elif isinstance(node, exp.Join):
        if node.args.get("method") or node.kind in ("ASOF", "POSITIONAL", "LATERAL") or node.args.get("match_condition"):
            raise Refused(f"{(node.args.get('method') or node.kind or '').upper()} JOIN is not in the accepted SQL subset")
    elif isinstance(node, exp.Column) and not isinstance(node.this, (exp.Identifier, exp.Star)):
        raise Refused(f"{_describe(node.this)} as a column is not in the accepted SQL subset")


def _describe(node: exp.Expression) -> str:
    if isinstance(node, exp.Func):
        name = node.sql_name() if hasattr(node, "sql_name") else node.key
        return f"function {name.lower()}()"
    return f"{node.key.upper()} ({node.sql('duckdb')[:60]})"

"""Parsing SQL text under limits, so that a query too large or too deep is refused in one line
naming the limit and the query's value, instead of exhausting Python's recursion deep inside
sqlglot's parser or optimizer, or DuckDB's expression depth.

The cheap limits come first: the text's length, then, over its tokens (so that string literals and
comments do not count), how deep parentheses nest and how many set operations chain (a chain of
UNIONs nests one level per branch without a parenthesis). The parsed tree is then measured without
recursion: its depth (AND/OR chains, which sqlglot walks flat, do not add to it) and its nodes.
Within these limits the coordinator's and the agent's later passes (qualify, scopes, masks,
lineage, generating SQL) stay far from the recursion limit; a RecursionError that happens anyway
is turned into the same kind of error by `limits_guard`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from fedlake.errors import FedlakeError

_SET_OPERATIONS = {TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT}


class SqlTooComplex(FedlakeError):
    """A query beyond one of the limits on SQL text; the message names the limit and the value."""

    def __init__(self, what: str, limit: int | None = None):
        self.what = what
        self.limit = limit
        super().__init__(f"the query {what}; the limit is {limit}" if limit is not None else f"the query {what}")


@dataclass(frozen=True)
class SqlLimits:
    """How large and how deep a query may be."""

    chars: int = 200_000
    nesting: int = 64  # parentheses deep
    set_operations: int = 128  # UNION / INTERSECT / EXCEPT in one query
    depth: int = 320  # expression tree levels, AND/OR chains counted as one
    nodes: int = 20_000  # expression tree nodes


LIMITS = SqlLimits()


def parse_sql(sql: str, limits: SqlLimits = LIMITS, dialect: str = "duckdb") -> list[exp.Expression | None]:
    """The statements of `sql`, as sqlglot.parse gives them; raises SqlTooComplex past a limit and
    ParseError for text that does not parse (an untokenizable one included)."""
    if len(sql) > limits.chars:
        raise SqlTooComplex(f"has {len(sql)} characters", limits.chars)
    reader = Dialect.get_or_raise(dialect)
    try:
        tokens = reader.tokenize(sql)
    except TokenError as exc:
        raise ParseError(str(exc)) from None
    _check_tokens(tokens, limits)
    with limits_guard():
        statements = reader.parser().parse(tokens, sql)
    for statement in statements:
        if statement is not None:
            check_tree(statement, limits)
    return statements


def _check_tokens(tokens: list, limits: SqlLimits) -> None:
    depth = deepest = operations = 0
    for token in tokens:
        kind = token.token_type
        if kind == TokenType.L_PAREN:
            depth += 1
            deepest = max(deepest, depth)
        elif kind == TokenType.R_PAREN:
            depth -= 1
        elif kind in _SET_OPERATIONS:
            operations += 1
    if deepest > limits.nesting:
        raise SqlTooComplex(f"nests parentheses {deepest} deep", limits.nesting)
    if operations > limits.set_operations:
        raise SqlTooComplex(f"has {operations} set operations (UNION, INTERSECT, EXCEPT)", limits.set_operations)


def check_tree(tree: exp.Expression, limits: SqlLimits = LIMITS) -> None:
    """Measure the tree's depth and size without recursing; raises SqlTooComplex past a limit."""
    nodes = deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        deepest = max(deepest, depth)
        for child in node.iter_expressions():
            flat = isinstance(child, exp.Connector) and isinstance(node, exp.Connector)
            stack.append((child, depth if flat else depth + 1))
    if deepest > limits.depth:
        raise SqlTooComplex(f"nests expressions {deepest} deep", limits.depth)
    if nodes > limits.nodes:
        raise SqlTooComplex(f"has {nodes} expression nodes", limits.nodes)


@contextmanager
def limits_guard() -> Iterator[None]:
    """Turn a RecursionError raised inside the block (sqlglot's parser, optimizer or generator over
    a tree the limits let through) into SqlTooComplex: the last resort, not the limit itself."""
    try:
        yield
    except RecursionError:
        raise SqlTooComplex("nests too deeply to plan (past Python's recursion limit)") from None


def parse_error_message(exc: ParseError) -> str:
    """What a user can act on in a parser's error: what was expected, where, and the text there;
    none of the parser's own class names, nor the terminal codes it underlines with."""
    first = exc.errors[0] if exc.errors else None
    if first is None:  # the tokenizer's: it quotes the whole text
        return "the text does not read as SQL (an unclosed quote or an unknown character?)"
    description = str(first.get("description") or "unexpected text")
    highlight = str(first.get("highlight") or "")
    if description.startswith("Required keyword") or "<class" in description:
        description = f"'{highlight}' is incomplete" if highlight else "an expression is incomplete"
    elif description == "Invalid expression / Unexpected token":
        description = f"unexpected '{highlight}'" if highlight else "unexpected text"
    near = f"{str(first.get('start_context') or '')[-40:]}{highlight}{str(first.get('end_context') or '')[:40]}".strip()
    return f"{description} at line {first.get('line')}, column {first.get('col')} (near: {near})"

"""What the command line says when something fails: one line, whatever the error's text holds.

An error's text may span lines, carry a terminal's underline codes (a SQL parser's), or quote a
value the user gave or the data held; a megabyte-long value is cut to its start, an ellipsis and
its length, so the line still says what is wrong.
"""

from __future__ import annotations

import re

DEBUG_ENV = "FEDLAKE_DEBUG"  # set: an unexpected error shows its traceback instead of one line
LONGEST_WORD = 120  # characters of one run without spaces (a value, a name) shown whole
LONGEST_LINE = 2_000
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LONG_WORD = re.compile(r"\S{%d,}" % (LONGEST_WORD + 1))


def shorten(text: str, keep: int) -> str:
    """`text` if it is at most `keep` characters, else its start, an ellipsis and its length."""
    return text if len(text) <= keep else f"{text[:keep]}… ({len(text):,} characters)"


def one_line(text: str) -> str:
    """`text` on one line without terminal codes, long values cut (see the module's docstring)."""
    line = " ".join(_TERMINAL_CODES.sub("", text).split())
    line = _LONG_WORD.sub(lambda m: shorten(m.group(0), LONGEST_WORD // 2), line)
    return shorten(line, LONGEST_LINE)

"""The archive's search DSL: a small recursive-descent parser into a predicate over a flat record.

Grammar (Lucene-like, as the ISIC archive documents it)::

    query    := [or_expr]                       empty query matches everything
    or_expr  := and_expr ("OR" and_expr)*
    and_expr := unary (["AND"] unary)*           terms side by side are ANDed
    unary    := "NOT" unary | "-" unary | "+" unary | primary
    primary  := "(" or_expr ")" | FIELD ":" value
    value    := QUOTED | RANGE | WORD
    RANGE    := ("[" | "{") bound "TO" bound ("]" | "}")     [ ] inclusive, { } exclusive, bound "*" = open

- ``field:value`` compares case-insensitively; numbers compare as numbers (``age_approx:50`` matches 50).
- A WORD may hold wildcards ``*`` (any run) and ``?`` (one character); ``field:*`` means the field is present.
  ``\\`` escapes the next character. A QUOTED value (``"Melanoma Invasive"``, ``\\"`` inside) is literal.
- Ranges are numeric when both bounds are numbers (or ``*``), else they compare lower-cased strings.
- Any field name is accepted; a record without the field never matches it (the real archive refuses unknown
  fields, the emulator is lenient so tests can search extra metadata columns).

``parse_query(text)`` returns a ``Query`` whose ``matches(fields)`` takes the flat field dict of a record.
Anything else raises QueryParseError with the position of the problem. No eval anywhere.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ArchiveError

__all__ = ["QueryParseError", "Query", "parse_query"]

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_KEYWORDS = ("AND", "OR", "NOT")
# Characters that end a bare word value (besides whitespace).
_WORD_STOP = set('()"[]{}')


class QueryParseError(ArchiveError, ValueError):
    """A search query the DSL cannot parse; ``position`` is the 0-based offset of the problem."""

    def __init__(self, reason: str, query: str, position: int) -> None:
        self.reason = reason
        self.query = query
        self.position = position
        super().__init__(
            f"invalid search query at position {position}: {reason} "
            f"(query {query!r}; example of a valid one: diagnosis_3:\"Melanoma Invasive\" AND age_approx:[20 TO 40])"
        )


def _as_number(value: object) -> float | None:
    """The value as a float when it is a number or a string spelling one (not bool, nan or inf)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and not math.isfinite(value) else float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def _as_text(value: object) -> str:
    """Lower-cased text of a record value, as it is matched (booleans are true / false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def _present(fields: Mapping[str, object], name: str) -> bool:
    value = fields.get(name)
    return value is not None and value != ""


# ---------------------------------------------------------------------------------------------- the predicate
class Query:
    """A parsed query: ``matches(fields)`` says whether a record's flat field dict satisfies it."""

    def matches(self, fields: Mapping[str, object]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, fields: Mapping[str, object]) -> bool:
        return self.matches(fields)


@dataclass(frozen=True)
class MatchAll(Query):
    def matches(self, fields: Mapping[str, object]) -> bool:
        return True


@dataclass(frozen=True)
class Present(Query):
    field: str

    def matches(self, fields: Mapping[str, object]) -> bool:
        return _present(fields, self.field)


@dataclass(frozen=True)
class Equals(Query):
    field: str
    text: str  # as written, not lower-cased

    def matches(self, fields: Mapping[str, object]) -> bool:
        if not _present(fields, self.field):
            return False
        value = fields[self.field]
        wanted, got = _as_number(self.text), _as_number(value)
        if wanted is not None and got is not None:
            return wanted == got
        return _as_text(value) == self.text.lower()


@dataclass(frozen=True)
class Wildcard(Query):
    field: str
    pattern: re.Pattern

    def matches(self, fields: Mapping[str, object]) -> bool:
        return _present(fields, self.field) and self.pattern.fullmatch(_as_text(fields[self.field])) is not None


@dataclass(frozen=True)
class Range(Query):
    field: str
    low: str | None       # None: open
    high: str | None
    include_low: bool
    include_high: bool

    @property
    def numeric(self) -> bool:
        return all(b is None or _as_number(b) is not None for b in (self.low, self.high))

    def matches(self, fields: Mapping[str, object]) -> bool:
        if not _present(fields, self.field):
            return False
        value = fields[self.field]
        if self.numeric:
            got = _as_number(value)
            low = None if self.low is None else _as_number(self.low)
            high = None if self.high is None else _as_number(self.high)
        else:
            got = _as_text(value)
            low = None if self.low is None else self.low.lower()
            high = None if self.high is None else self.high.lower()
        if got is None:
            return False
        if low is not None and (got < low or (got == low and not self.include_low)):
            return False
        if high is not None and (got > high or (got == high and not self.include_high)):
            return False
        return True


@dataclass(frozen=True)
class And(Query):
    parts: tuple[Query, ...]

    def matches(self, fields: Mapping[str, object]) -> bool:
        return all(p.matches(fields) for p in self.parts)


@dataclass(frozen=True)
class Or(Query):
    parts: tuple[Query, ...]

    def matches(self, fields: Mapping[str, object]) -> bool:
        return any(p.matches(fields) for p in self.parts)


@dataclass(frozen=True)
class Not(Query):
    part: Query

    def matches(self, fields: Mapping[str, object]) -> bool:
        return not self.part.matches(fields)


# ---------------------------------------------------------------------------------------------- the parser
def parse_query(text: str | None) -> Query:
    """Parse the DSL into a Query; an empty or blank query matches every record."""
    return _Parser(text or "").parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- helpers
    def _error(self, reason: str, position: int | None = None) -> QueryParseError:
        return QueryParseError(reason, self.text, self.pos if position is None else position)

    def _at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _near(self) -> str:
        rest = self.text[self.pos:self.pos + 20]
        return repr(rest) if rest else "the end of the query"

    def _keyword_here(self, word: str) -> bool:
        end = self.pos + len(word)
        if self.text[self.pos:end] != word:
            return False
        return end == len(self.text) or self.text[end].isspace() or self.text[end] in "()"

    def _take_keyword(self, word: str) -> bool:
        self._skip_ws()
        if self._keyword_here(word):
            self.pos += len(word)
            return True
        return False

    # -- grammar
    def parse(self) -> Query:
        self._skip_ws()
        if self._at_end():
            return MatchAll()
        node = self._or()
        self._skip_ws()
        if not self._at_end():
            if self._peek() == ")":
                raise self._error("unmatched ')'")
            raise self._error(f"unexpected {self._near()}")
        return node

    def _or(self) -> Query:
        parts = [self._and()]
        while self._take_keyword("OR"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def _and(self) -> Query:
        parts = [self._unary()]
        while True:
            self._skip_ws()
            if self._at_end() or self._peek() == ")" or self._keyword_here("OR"):
                break
            self._take_keyword("AND")
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def _unary(self) -> Query:
        self._skip_ws()
        if self._take_keyword("NOT"):
            return Not(self._unary())
        if self._peek() == "-":
            self.pos += 1
            return Not(self._unary())
        if self._peek() == "+":
            self.pos += 1
            return self._unary()
        return self._primary()

    def _primary(self) -> Query:
        self._skip_ws()
        if self._at_end():
            raise self._error("expected a term such as field:value, but the query ended")
        if self._peek() == "(":
            opened = self.pos
            self.pos += 1
            self._skip_ws()
            if self._peek() == ")":
                raise self._error("empty parentheses")
            node = self._or()
            self._skip_ws()
            if self._peek() != ")":
                raise self._error(f"missing ')' to close the '(' at position {opened}")
            self.pos += 1
            return node
        for word in _KEYWORDS:
            if self._keyword_here(word):
                raise self._error(f"expected a term such as field:value before {word}")
        match = _FIELD.match(self.text, self.pos)
        if not match:
            raise self._error(f"expected a term such as field:value, found {self._near()}")
        field = match.group()
        self.pos = match.end()
        if self._peek() != ":":
            hint = (f"; operators are upper case: {field.upper()}" if field.upper() in _KEYWORDS
                    else "; quote values that contain spaces or ':'")
            raise self._error(f"expected ':' after field name {field!r} (terms are field:value{hint})")
        self.pos += 1
        self._skip_ws()
        return self._value(field)

    def _value(self, field: str) -> Query:
        char = self._peek()
        if not char:
            raise self._error(f"expected a value after '{field}:'")
        if char == '"':
            return Equals(field, self._quoted())
        if char in "[{":
            return self._range(field)
        start = self.pos
        pieces, has_wildcard = self._word(stop=_WORD_STOP, what="value")
        if not pieces:
            raise self._error(f"expected a value after '{field}:', found {self._near()}", start)
        if pieces == [("*", True)]:
            return Present(field)
        if not has_wildcard:
            return Equals(field, "".join(p for p, _ in pieces))
        regex = "".join(
            (".*" if p == "*" else "." if p == "?" else re.escape(p)) if special else re.escape(p.lower())
            for p, special in pieces
        )
        return Wildcard(field, re.compile(regex, re.DOTALL))

    def _quoted(self) -> str:
        opened = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self._at_end():
                raise self._error(f"unterminated quoted value starting at position {opened}", opened)
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1

    def _word(self, stop: set[str], what: str) -> tuple[list[tuple[str, bool]], bool]:
        """Characters up to whitespace or a stop character: [(text, is_wildcard)], and whether any wildcard."""
        pieces: list[tuple[str, bool]] = []
        has_wildcard = False
        while not self._at_end():
            char = self.text[self.pos]
            if char.isspace() or char in stop:
                break
            if char == ":":
                raise self._error(f"unexpected ':' in a {what}; quote values that contain ':' or spaces")
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self._error("a '\\' at the end of the query escapes nothing")
                pieces.append((self.text[self.pos + 1], False))
                self.pos += 2
                continue
            special = char in "*?"
            has_wildcard |= special
            pieces.append((char, special))
            self.pos += 1
        return pieces, has_wildcard

    def _range(self, field: str) -> Query:
        opened = self.pos
        include_low = self._peek() == "["
        self.pos += 1
        low = self._bound(field, opened)
        if not self._take_keyword("TO"):
            raise self._error(f"expected 'TO' in the range for {field!r} (e.g. {field}:[20 TO 40])")
        high = self._bound(field, opened)
        self._skip_ws()
        closer = self._peek()
        if closer not in ("]", "}"):
            raise self._error(f"expected ']' or '}}' to close the range opened at position {opened}")
        self.pos += 1
        if low is None and high is None:
            return Present(field)
        return Range(field, low, high, include_low, closer == "]")

    def _bound(self, field: str, opened: int) -> str | None:
        self._skip_ws()
        if self._at_end():
            raise self._error(f"unterminated range: the query ended inside the range opened at position {opened}")
        if self._peek() == '"':
            return self._quoted()
        start = self.pos
        pieces, _ = self._word(stop=set("[]{}()\""), what="range bound")
        if not pieces:
            raise self._error(f"expected a range bound for {field!r}, found {self._near()}", start)
        text = "".join(p for p, _ in pieces)
        if text == "TO":
            raise self._error(f"expected a range bound for {field!r} before 'TO'", start)
        return None if text == "*" else text

"""A small arithmetic parser for model output: numbers, + - * /, parentheses, unary minus. Never `eval()`.

Exact (fractions), bounded (input length, nesting depth, magnitude of every intermediate value), and
total: anything else (names, calls, attributes, exponents, strings) is rejected with None, never run.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 200
MAX_DEPTH = 20
MAX_ABS = Fraction(10) ** 15
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([-+*/×÷()]))")


class ParseError(ValueError):
    pass


def tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ParseError(f"expression longer than {MAX_CHARS} characters")
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ParseError(f"unexpected character {text[pos]!r} at {pos}")
        tokens.append(m.group(1) or {"×": "*", "÷": "/"}.get(m.group(2), m.group(2)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*; unary := '-' unary | atom;
    atom := number | '(' expr ')'"""

    def __init__(self, tokens: list[str]):
        self.tokens, self.i, self.depth, self.numbers = tokens, 0, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end of expression")
        self.i += 1
        return tok

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = _check(value + self.term() if self.take() == "+" else value - self.term())
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.unary()
            if op == "/" and rhs == 0:
                raise ParseError("division by zero")
            value = _check(value * rhs if op == "*" else value / rhs)
        return value

    def unary(self) -> Fraction:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.atom()

    def atom(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ParseError("too deeply nested")
            value = self.expr()
            if self.take() != ")":
                raise ParseError("missing ')'")
            self.depth -= 1
            return value
        if tok[0].isdigit():
            value = _check(Fraction(tok))
            self.numbers.append(value)
            return value
        raise ParseError(f"unexpected {tok!r}")


def _check(value: Fraction) -> Fraction:
    if abs(value) > MAX_ABS:
        raise ParseError("number too large")
    return value


def parse(text: str) -> tuple[Fraction, list[Fraction]]:
    """(value, the numbers used in order); raises ParseError."""
    parser = _Parser(tokenize(text))
    value = parser.expr()
    if parser.peek() is not None:
        raise ParseError(f"unexpected {parser.peek()!r}")
    return value, parser.numbers


def safe_eval(text: str) -> Fraction | None:
    """The value of an arithmetic expression, or None when it is not one (or is unsafe to compute)."""
    try:
        return parse(text)[0]
    except ParseError:
        return None

"""Verifiable tasks: generators and checkers that never run model text (see safe_math)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from moi_demo.evaluation.tasks.safe_math import ParseError, parse, safe_eval

BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


@dataclass
class Example:
    task: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def extract_answer(text: str) -> str | None:
    """The final answer of a model output: the last \\boxed{...}, else 'answer: X', else the final line."""
    boxed = BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    m = re.findall(r"answer\s*(?:is|:)\s*([^\n]+)", text, flags=re.IGNORECASE)
    if m:
        return m[-1].strip().rstrip(".").strip()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _as_number(text: str) -> Fraction | None:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if NUMBER.fullmatch(text):
        try:
            return Fraction(text)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def final_number(text: str) -> Fraction | None:
    """A number from an extracted answer: the whole answer, or an expression, or the last number in it."""
    answer = extract_answer(text)
    if answer is None:
        return None
    if (n := _as_number(answer)) is not None:
        return n
    if "=" in answer:  # "3 + 4 = 7": the right-hand side
        answer = answer.rsplit("=", 1)[1]
    numbers = NUMBER.findall(answer.replace(",", ""))
    return _as_number(numbers[-1]) if numbers else None


def answers_match(extracted: str | None, expected: str) -> bool:
    if extracted is None:
        return False
    a, b = _as_number(extracted), _as_number(expected)
    if a is not None and b is not None:
        return a == b
    norm = lambda s: re.sub(r"\s+", " ", s.strip().strip("$").rstrip(".").lower())  # noqa: E731
    return norm(extracted) == norm(expected)


# --- multi-step arithmetic -------------------------------------------------------------------------------

ARITH_LEVELS = {1: (2, 9, "+"), 2: (2, 20, "+-"), 3: (3, 20, "+-*"), 4: (4, 50, "+-*")}


def arithmetic(n: int, seed: int = 0, level: int = 1) -> list[Example]:
    """Level 1: a + b with one digit; 2: two terms to 20 with + or -; 3: three terms with *; 4: four terms."""
    terms, hi, ops = ARITH_LEVELS[level]
    rng = random.Random(f"arith-{level}-{seed}")
    out = []
    for _ in range(n):
        nums = [rng.randint(1, hi) for _ in range(terms)]
        expr = str(nums[0])
        for x in nums[1:]:
            expr += f" {rng.choice(ops)} {x}"
        value = safe_eval(expr)
        assert value is not None and value.denominator == 1
        prompt = f"What is {expr}? Answer with the number only, as \\boxed{{N}}."
        out.append(Example(f"arithmetic-{level}", prompt, str(value.numerator), {"expression": expr}))
    return out


def check_arithmetic(example: Example, output: str) -> tuple[str | None, bool]:
    value = final_number(output)
    extracted = None if value is None else (str(value.numerator) if value.denominator == 1 else str(value))
    return extracted, value is not None and value == Fraction(example.answer)


# --- countdown -----------------------------------------------------------------------------------------------


def countdown(n: int, seed: int = 0, level: int = 4) -> list[Example]:
    """CountDown-style: `level` numbers and a target reachable with + - * / using each number exactly once
    (a solution is built first, so every example is solvable)."""
    rng = random.Random(f"countdown-{level}-{seed}")
    out = []
    while len(out) < n:
        nums = [rng.randint(1, 25 if level <= 3 else 50) for _ in range(level)]
        expr, value = str(nums[0]), Fraction(nums[0])
        for x in nums[1:]:
            op = rng.choice("+-*/" if value % x == 0 else "+-*")
            expr, value = f"({expr} {op} {x})", safe_eval(f"({expr}) {op} {x}")  # type: ignore[assignment]
        if value is None or value.denominator != 1 or not 1 <= value <= 1000:
            continue
        shown = sorted(nums)
        prompt = (
            f"Using the numbers {shown}, each exactly once, and the operations + - * /, write an expression "
            f"that equals {value.numerator}. Give the expression as \\boxed{{expression}}."
        )
        out.append(Example(f"countdown-{level}", prompt, str(value.numerator), {"numbers": shown, "solution": expr}))
    return out


def check_countdown(example: Example, output: str) -> tuple[str | None, bool]:
    extracted = extract_answer(output)
    if extracted is None:
        return None, False
    expression = extracted.split("=")[0]
    try:
        value, used = parse(expression)
    except ParseError:
        return extracted, False
    same_numbers = sorted(used) == sorted(Fraction(x) for x in example.meta["numbers"])
    return extracted, same_numbers and value == Fraction(example.answer)


# --- user tasks ----------------------------------------------------------------------------------------------


def load_jsonl(path: str | Path, n: int | None = None) -> list[Example]:
    """`{"prompt": ..., "answer": ...}` per line (AIME-style: answers compared to the final \\boxed{} or line)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" not in row or "answer" not in row:
            raise ValueError(f"{path}:{i + 1}: each line needs 'prompt' and 'answer'")
        out.append(Example("jsonl", str(row["prompt"]), str(row["answer"]), {"line": i + 1}))
    return out[:n] if n else out


def check_jsonl(example: Example, output: str) -> tuple[str | None, bool]:
    """The final answer against the gold one: equal as numbers or as text, else (math-verify installed, the `eval`
    extra) equal as mathematics (`\\frac{1}{2}` = `0.5`, sets, intervals), checked in a bounded worker."""
    extracted = extract_answer(output)
    if answers_match(extracted, example.answer):
        return extracted, True
    from moi_demo.evaluation.tasks import latex_verify

    if extracted is not None and latex_verify.available():
        return extracted, latex_verify.shared().check(example.answer, extracted)
    return extracted, False


def get_task(name: str, n: int, seed: int = 0) -> tuple[list[Example], Any]:
    """`arithmetic[-L]` (L = 1..4), `countdown[-L]` (L numbers, default 4), or a path to a .jsonl file."""
    if name.endswith(".jsonl"):
        return load_jsonl(name, n), check_jsonl
    base, _, level = name.partition("-")
    if base == "arithmetic":
        return arithmetic(n, seed, int(level or 1)), check_arithmetic
    if base == "countdown":
        return countdown(n, seed, int(level or 4)), check_countdown
    raise ValueError(f"task: must be arithmetic[-1..4], countdown[-3..5] or a .jsonl file; got {name!r}")

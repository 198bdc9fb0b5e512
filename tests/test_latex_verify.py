"""math-verify for JSONL answers: equivalent LaTeX forms are accepted, and hostile text is refused within bounds
(time, memory, size) without executing anything. A real worker process; no model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moi_demo.evaluation.tasks import Example, check_jsonl, latex_verify

pytestmark = pytest.mark.skipif(not latex_verify.available(), reason="math-verify is not installed (the eval extra)")


@pytest.fixture(scope="module")
def verifier():
    v = latex_verify.LatexVerifier(timeout_s=3.0, memory_bytes=1 << 30)
    yield v
    v.close()


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("42", "\\boxed{ 42 }"),
        ("\\dfrac{3}{4}", "\\boxed{0.75}"),
        ("\\{1, 2\\}", "\\{2,1\\}"),
        ("(0, 1]", "\\boxed{(0,1]}"),
        ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ],
)
def test_equivalent_forms_are_accepted(verifier, gold, answer):
    assert verifier.check(gold, answer)


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("(0, 1]", "[0, 1]"),
        ("\\{1, 2\\}", "\\{1, 3\\}"),
        ("42", None),
        ("42", "   "),
    ],
)
def test_different_answers_are_refused(verifier, gold, answer):
    assert not verifier.check(gold, answer)


def test_hostile_text_is_bounded_and_never_executed(verifier, tmp_path):
    marker = tmp_path / "pwned"
    start = time.perf_counter()
    assert not verifier.check("1", f"__import__('os').system('touch {marker}')")
    assert not verifier.check("1", f"\\boxed{{__import__('pathlib').Path('{marker}').touch()}}")
    assert not Path(marker).exists()
    assert not verifier.check("1", "(" * 5_000)  # over the size cap: never sent
    assert not verifier.check("1", "9^{9^{9^{9^{9}}}}")  # sympy would run out of time or memory
    assert not verifier.check("1", "\\boxed{" * 600 + "1" + "}" * 600)
    assert time.perf_counter() - start < 60
    assert verifier.check("\\frac{1}{2}", "0.5")  # a fresh worker serves the next check


def test_check_jsonl_uses_the_safe_parser_then_math_verify():
    example = Example("jsonl", "p", "\\frac{1}{2}")
    assert check_jsonl(example, "So the answer is \\boxed{0.5}.") == ("0.5", True)
    assert check_jsonl(Example("jsonl", "p", "12"), "answer: 12") == ("12", True)  # numbers: no worker needed
    assert check_jsonl(example, "\\boxed{2}")[1] is False

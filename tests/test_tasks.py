"""Task checkers on hand-written right and wrong answers, hostile strings, and the interval/test math."""

from __future__ import annotations

from fractions import Fraction

import pytest

from moi_demo.evaluation.evaluate import mcnemar_exact, mode_configs, wilson
from moi_demo.evaluation.tasks import (
    Example,
    answers_match,
    arithmetic,
    check_arithmetic,
    check_countdown,
    check_jsonl,
    countdown,
    extract_answer,
    get_task,
    load_jsonl,
)
from moi_demo.evaluation.tasks.safe_math import ParseError, parse, safe_eval

HOSTILE = [
    "__import__('os').system('touch /tmp/pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "9**9**9**9",
    "2^1000000",
    "1/0",
    "(1+2",
    "1+2)",
    "(" * 50 + "1" + ")" * 50,
    "1" * 300,
    "lambda: 1",
    "open('/etc/passwd').read()",
    "10**100",
    "1e308*10",
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_are_rejected_not_run(text, tmp_path):
    assert safe_eval(text) is None
    ex = countdown(1, 0, 4)[0]
    assert check_countdown(ex, f"\\boxed{{{text}}}")[1] is False


def test_parser_exact_values():
    assert safe_eval("3 + 4 * 2") == 11
    assert safe_eval("(3 + 4) * 2") == 14
    assert safe_eval("7 / 2") == Fraction(7, 2)
    assert safe_eval("-3 - -4") == 1
    assert safe_eval("8 ÷ 2 × 3") == 12
    assert safe_eval("99999999 * 99999999 * 99999999") is None  # beyond the magnitude bound
    with pytest.raises(ParseError, match="division by zero"):
        parse("5 / (2 - 2)")
    assert parse("(1 + 2) * 3")[1] == [1, 2, 3]


def test_extract_answer():
    assert extract_answer("so \\boxed{12} and finally \\boxed{13}.") == "13"
    assert extract_answer("The answer is 42.") == "42"
    assert extract_answer("Let me think\n\n7 + 5 = 12\n") == "7 + 5 = 12"
    assert extract_answer("") is None


def test_arithmetic_checker():
    ex = Example("arithmetic-1", "What is 3 + 4?", "7")
    assert check_arithmetic(ex, "3 + 4 = 7. So the answer is \\boxed{7}") == ("7", True)
    assert check_arithmetic(ex, "The answer is 7.")[1]
    assert check_arithmetic(ex, "3 + 4 = 7")[1]
    assert not check_arithmetic(ex, "\\boxed{8}")[1]
    assert not check_arithmetic(ex, "I don't know")[1]
    assert not check_arithmetic(ex, "\\boxed{__import__('os')}")[1]


def test_countdown_checker():
    ex = Example("countdown-4", "", "24", {"numbers": [1, 2, 3, 4]})
    assert check_countdown(ex, "\\boxed{(1 + 2 + 3) * 4}")[1]
    assert check_countdown(ex, "\\boxed{4 * 3 * 2 * 1 = 24}")[1]
    assert not check_countdown(ex, "\\boxed{4 * 3 * 2}")[1]  # a number unused
    assert not check_countdown(ex, "\\boxed{4 * 3 * 2 * 1 * 1}")[1]  # a number used twice
    assert not check_countdown(ex, "\\boxed{4 * 3 * 2 + 1}")[1]  # wrong value
    assert not check_countdown(ex, "\\boxed{24}")[1]


def test_generated_tasks_are_solvable_and_deterministic():
    for ex in countdown(20, 3, 4):
        assert check_countdown(ex, f"\\boxed{{{ex.meta['solution']}}}")[1]
    for level in (1, 2, 3, 4):
        for ex in arithmetic(10, 1, level):
            assert check_arithmetic(ex, f"\\boxed{{{ex.answer}}}")[1]
    assert [e.prompt for e in arithmetic(5, 2, 3)] == [e.prompt for e in arithmetic(5, 2, 3)]
    assert [e.prompt for e in arithmetic(5, 2, 3)] != [e.prompt for e in arithmetic(5, 3, 3)]


def test_jsonl_loader(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text('{"prompt": "p1", "answer": "204"}\n\n{"prompt": "p2", "answer": "x + 1"}\n')
    examples = load_jsonl(path)
    assert [e.answer for e in examples] == ["204", "x + 1"]
    assert check_jsonl(examples[0], "... so the answer is \\boxed{204}")[1]
    assert check_jsonl(examples[0], "final line:\n204.")[1]
    assert not check_jsonl(examples[0], "\\boxed{205}")[1]
    assert check_jsonl(examples[1], "\\boxed{X + 1}")[1]
    assert answers_match("1,000", "1000") and not answers_match(None, "1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: each line needs 'prompt' and 'answer'"):
        load_jsonl(bad)
    assert get_task(str(path), 1)[0][0].prompt == "p1"
    with pytest.raises(ValueError, match="task: must be"):
        get_task("chess", 3)


def test_wilson_known_values():
    # Wilson 95% for 8/10: (0.4902, 0.9433); for 0/10: (0, 0.2775); for 50/100: (0.4038, 0.5962)
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 0.03125
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # 0.021484375
    assert mcnemar_exact(3, 2) == mcnemar_exact(2, 3)


def test_mode_configs():
    labels = [label for label, _ in mode_configs(["standard", "direct", "moi"], [0.5, 2.0], 20)]
    assert labels == ["standard", "direct", "moi (beta=0.5)", "moi (beta=2)"]
    with pytest.raises(ValueError, match="modes"):
        mode_configs(["greedy"], [1.0], 20)

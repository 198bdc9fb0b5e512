"""LaTeX answers (`\\frac{1}{2}`, `\\boxed{ 42 }`, sets, intervals) checked with Hugging Face's `math-verify`, bounded.

math-verify turns LaTeX into sympy and compares. On model text that is hostile (or merely unlucky) sympy can run
for minutes or take gigabytes (`9^{9^{9^{9}}}`), and math-verify's own timeout uses SIGALRM, which only works in a
main thread. So every check runs in a worker process of its own: the answer is cut at MAX_CHARS before it is sent,
the worker's address space is capped (RLIMIT_AS), and a check that takes longer than TIMEOUT_S kills the worker (a
new one starts for the next check) and counts as wrong. Only math-verify's LaTeX extraction is used: its plain-
expression extraction goes through sympy's `parse_expr`, which evaluates Python.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
from typing import Any

logger = logging.getLogger(__name__)

MAX_CHARS = 2_000  # of the gold answer and of the extracted model answer
TIMEOUT_S = 5.0  # per check, parse and compare
MEMORY_BYTES = 2 << 30  # the worker's address space


def available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def _as_latex(text: str) -> str:
    """math-verify extracts LaTeX from math delimiters or \\boxed{}: wrap a bare answer in $...$."""
    text = text.strip()
    return text if ("$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text) else f"${text}$"


def _verify(gold: str, answer: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    g = parse(_as_latex(gold), extraction_config=config, parsing_timeout=None)  # type: ignore[arg-type]
    a = parse(_as_latex(answer), extraction_config=config, parsing_timeout=None)  # type: ignore[arg-type]
    return bool(g and a and verify(g, a, timeout_seconds=None))


def _serve(conn: Any, memory_bytes: int) -> None:  # pragma: no cover - runs in the worker process
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import math_verify  # noqa: F401  (imported once, before the first check's clock starts)

    conn.send("ready")
    while True:
        try:
            gold, answer = conn.recv()
        except EOFError:
            return
        try:
            conn.send(_verify(gold, answer))
        except BaseException as e:  # MemoryError, RecursionError, sympy's own errors: a wrong answer
            conn.send(f"error: {type(e).__name__}")


class LatexVerifier:
    """One worker process, restarted after a timeout or a crash. Thread-safe (checks run one at a time)."""

    def __init__(self, timeout_s: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES, max_chars: int = MAX_CHARS):
        self.timeout_s, self.memory_bytes, self.max_chars = timeout_s, memory_bytes, max_chars
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()
        self.killed = 0  # workers ended for taking too long or dying

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.memory_bytes), daemon=True, name="moi-latex-verify")
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(60) or parent.recv() != "ready":
            self._stop()
            raise RuntimeError("the math-verify worker did not start")

    def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.kill()
                self._proc.join(5)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._proc = self._conn = None

    def check(self, gold: str, answer: str | None) -> bool:
        """Whether `answer` equals `gold` as mathematics; False for no answer, an answer over max_chars, a check
        over the time bound or one that ran out of memory."""
        if answer is None or not answer.strip() or len(answer) > self.max_chars or len(gold) > self.max_chars:
            return False
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            try:
                self._conn.send((gold, answer))
                if self._conn.poll(self.timeout_s):
                    result = self._conn.recv()
                    return result is True
            except (EOFError, OSError, BrokenPipeError):
                pass  # the worker died (its memory cap): a new one for the next check
            logger.warning(
                "math-verify: check of %d characters stopped (over %.0f s or out of memory)",
                len(answer),
                self.timeout_s,
            )
            self.killed += 1
            self._stop()
            return False

    def close(self) -> None:
        with self._lock:
            self._stop()


_shared: LatexVerifier | None = None


def shared() -> LatexVerifier:
    """The process's verifier (its worker starts at the first check)."""
    global _shared
    if _shared is None:
        _shared = LatexVerifier()
    return _shared

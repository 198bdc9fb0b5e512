"""Process lifecycle: SIGTERM or SIGINT to a moi-demo process (the app, serve, eval, bench, doctor) stops every
process it started, within seconds, whatever it was doing.

vLLM's engine core and workers are child processes. Python's default SIGTERM ends the parent at once and leaves
them orphaned (holding their memory, still using CPU); a later SIGTERM does not reach them either. Here a signal
runs the registered cleanups (the engine's own shutdown first), then terminates whatever descendant is left, then
kills what still stands, and exits with 128 + the signal number. A watchdog makes the exit certain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

logger = logging.getLogger("moi_demo.serving.lifecycle")

DEADLINE_S = 12.0  # everything is gone well within 15 s of the signal
_cleanups: list[Callable[[], None]] = []
_installed = False


@contextlib.contextmanager
def temporary_env(env: dict[str, str] | None) -> Iterator[None]:
    """Set environment variables for what starts inside (engine processes read theirs when spawned)."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def on_shutdown(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` (e.g. an engine's shutdown) when the process is told to stop."""
    _cleanups.append(cleanup)


def kill_descendants(grace_s: float = 5.0) -> int:
    """SIGTERM every descendant process, then SIGKILL those still alive after `grace_s`; returns how many."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(children)


def _stop(signum: int) -> None:
    code = 128 + signum
    watchdog = threading.Timer(DEADLINE_S, lambda: (kill_descendants(0.5), os._exit(code)))
    watchdog.daemon = True
    watchdog.start()
    for cleanup in reversed(_cleanups):
        try:
            cleanup()
        except Exception:  # a cleanup that fails must not keep the others (or the exit) from running
            logger.exception("moi-demo: a shutdown step failed")
    n = kill_descendants()
    logger.info("moi-demo: stopped (%s); %d child process(es) ended", signal.Signals(signum).name, n)
    logging.shutdown()
    os._exit(code)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT stop this process and every process it started (idempotent; main thread only)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        logger.info("moi-demo: %s received: stopping every process this one started", signal.Signals(signum).name)
        # Off the signal frame: the cleanups may block (joins, RPCs) and must not run inside a handler that a
        # second signal could interrupt. A second signal while stopping is ignored.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=_stop, args=(signum,), name="moi-demo-shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    _installed = True

"""The real `python app.py` as a process: SIGTERM (what kill, systemd and container runtimes send) or SIGINT,
mid-run, stops every process it started within 15 s: no orphaned vLLM engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.vllm_util import ROOT, free_port

pytestmark = pytest.mark.engine


def session_processes(sid: int) -> list[psutil.Process]:
    """Every live process of a session: the app's children keep its session id even when orphaned."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


# Greedy, this prompt runs the whole 400 tokens on the default model (~15 s a lane here): still mid-run when the
# client sees its first update, which can lag the server by seconds. ("Tell me a long story." ends after ~60 tokens.)
LONG_PROMPT = "Write a long essay on the history of Rome, in ten chapters."


class App:
    """`python app.py` in its own session, on a free port; `client()` once it serves."""

    def __init__(self, model: str, tmp_path):
        self.port = free_port()
        self.log_path = tmp_path / "app.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", model, "--port", str(self.port), "--max-model-len", "1024"],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def client(self, timeout: float = 240):
        from gradio_client import Client

        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                return Client(f"http://127.0.0.1:{self.port}/", verbose=False)
            except Exception:
                time.sleep(1)
        raise AssertionError(self.log_path.read_text()[-3000:])

    def close(self) -> None:
        for p in session_processes(self.proc.pid):
            p.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


def test_engine_death_is_named_and_the_app_restarts_it(default_model, tmp_path):
    """Kill the engine core mid-run: the run ends at once with an error saying so; the app restarts the engine
    by itself and then serves the same greedy output as before; the app process never exits."""
    from gradio_client.exceptions import AppError

    app = App(default_model, tmp_path)
    try:
        client = app.client()
        args = ("What is the capital of France?", "MoI", 1.0, 20, 0.0, 1.0, 24, 0)
        before = client.predict(*args, api_name="/generate")[:2]
        job = client.submit(LONG_PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 400, 0, api_name="/generate")
        while not job.outputs():
            time.sleep(0.05)
        (core,) = [p for p in psutil.Process(app.proc.pid).children(recursive=True) if "EngineCore" in p.name()]
        killed_at = time.time()
        core.kill()
        with pytest.raises(
            AppError,
            match=r"engine: stopped \(engine core exited with signal 9\); restarting, "
            r"try again in ~\d+ s",
        ):
            job.result(timeout=30)
        assert time.time() - killed_at < 10
        assert client.predict(api_name="/health")["engine"] == "restarting"
        with pytest.raises(AppError, match=r"engine: stopped \(engine core exited with signal 9\); restarting"):
            client.predict(*args, api_name="/generate")  # a run that arrives meanwhile hears the same
        while client.predict(api_name="/health")["engine"] != "ready":
            assert time.time() - killed_at < 120 and app.proc.poll() is None, app.log_path.read_text()[-3000:]
            time.sleep(1)
        health = client.predict(api_name="/health")
        assert health["restarts"] == 1
        after = client.predict(*args, api_name="/generate")[:2]
        assert [a["value"] for a in after] == [b["value"] for b in before]
        assert app.proc.poll() is None
    finally:
        app.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_leaves_no_process_behind(default_model, tmp_path, sig):
    from gradio_client import Client

    port = free_port()
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen(
        [sys.executable, "app.py", "--model", default_model, "--port", str(port), "--max-model-len", "1024"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        client = None
        while time.time() < deadline and app.poll() is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(1)
        assert client is not None, (tmp_path / "app.log").read_text()[-3000:]
        assert len(session_processes(app.pid)) >= 2  # the app and its engine core (and worker)
        job = client.submit(LONG_PROMPT, "MoI", 1.0, 20, 0.0, 1.0, 400, 0, api_name="/generate")
        while not job.outputs() and not job.done():
            time.sleep(0.1)  # streaming: the engine is mid-run
        app.send_signal(sig)
        start = time.time()
        while time.time() - start < 15 and session_processes(app.pid):
            time.sleep(0.2)
        left = session_processes(app.pid)
        assert not left, f"left after 15 s: {[(p.pid, p.name()) for p in left]}"
        assert app.wait(timeout=5) == 128 + sig
    finally:
        for p in session_processes(app.pid):
            p.kill()
        if app.poll() is None:
            app.kill()
        log.close()

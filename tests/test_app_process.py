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

pytestmark = pytest.mark.vllm


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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_leaves_no_process_behind(default_model, tmp_path, sig):
    from gradio_client import Client

    port = free_port()
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen([sys.executable, "app.py", "--model", default_model, "--port", str(port),
                            "--max-model-len", "1024"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
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
        job = client.submit("Tell me a long story.", "MoI", 1.0, 20, 0.0, 1.0, 400, 0, "p", api_name="/generate")
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

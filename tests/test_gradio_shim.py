"""The Gradio internals behind app/gradio_shim.py, on a real queue of the pinned Gradio: fails when Gradio renames or
reshapes them (the end-to-end check, Stop dropping a queued run, is in test_app.py)."""

from __future__ import annotations

import inspect

import gradio as gr

from moi_demo.app import gradio_shim


def _demo() -> gr.Blocks:
    with gr.Blocks() as demo:
        out = gr.Textbox()
        gr.Button().click(lambda: "x", None, out, api_name="generate", concurrency_id="engine-runs")
    return demo.queue()


def test_the_queue_the_shim_reads_is_there():
    from gradio import queueing
    from gradio.server_messages import ProcessCompletedMessage

    demo = _demo()
    queue = demo._queue
    assert isinstance(queue, queueing.Queue) and len(queue) == 0
    assert isinstance(queue.event_queue_per_concurrency_id, dict)
    assert isinstance(queue.pending_messages_per_session, dict)
    assert inspect.iscoroutinefunction(queue.remove_from_queue)
    assert list(inspect.signature(queue.remove_from_queue).parameters) == ["event_id"]
    assert {"output", "success", "event_id"} <= set(ProcessCompletedMessage.model_fields)
    event = queueing.Event("session-1", demo.fns[0], None, None)  # what the queue holds for a waiting call
    assert event.session_hash == "session-1" and event.fn.api_name == "generate" and isinstance(event._id, str)
    assert gradio_shim.queue_length(demo) == 0 and gradio_shim.waiting_events(demo, "session-1", {"generate"}) == []


def test_no_queue_reads_as_empty():
    assert gradio_shim.queue_length(None) == 0 and gradio_shim.waiting_events(None, "s", {"generate"}) == []

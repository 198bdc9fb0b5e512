"""The Gradio internals the app relies on, in one place (Gradio 6.31): its queue's length, and removing a
session's waiting events as Gradio's own /cancel route does. `tests/test_gradio_shim.py` fails when Gradio
changes them."""

from __future__ import annotations

from typing import Any

import gradio as gr


def _queue(demo: gr.Blocks | None) -> Any:
    return getattr(demo, "_queue", None)


def queue_length(demo: gr.Blocks | None) -> int:
    """Events waiting in the app's queue (0 before the queue exists)."""
    queue = _queue(demo)
    return len(queue) if queue is not None else 0


def waiting_events(demo: gr.Blocks | None, session: str, api_names: set[str]) -> list[Any]:
    """The session's events that still wait in the queue, of the named endpoints."""
    queue = _queue(demo)
    if queue is None:
        return []
    return [
        event
        for event_queue in list(queue.event_queue_per_concurrency_id.values())
        for event in list(event_queue.queue)
        if event.session_hash == session and getattr(event.fn, "api_name", None) in api_names
    ]


async def drop_waiting(demo: gr.Blocks | None, session: str, api_names: set[str]) -> int:
    """Remove the session's waiting events of the named endpoints, telling each waiting client its job ended
    (what Gradio's /cancel route does for one event). Returns how many."""
    from gradio.server_messages import ProcessCompletedMessage

    queue = _queue(demo)
    events = waiting_events(demo, session, api_names)
    for event in events:
        await queue.remove_from_queue(event._id)
        messages = queue.pending_messages_per_session.get(session)
        if messages is not None:
            messages.put_nowait(ProcessCompletedMessage(output={}, success=True, event_id=event._id))
    return len(events)

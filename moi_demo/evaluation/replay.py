"""`moi-demo replay FILE`: re-run an export's lanes and say, lane by lane, whether the tokens are the recorded ones.

FILE is any export with traces: the page's download (or /export), `moi-demo generate --json`. Its run card says what
produced it; where this machine's platform, device or versions differ, that is said before comparing (a different
CPU or GPU may change a greedy token legitimately). Lanes of one prompt and sampling settings are submitted together,
as the app does, on an engine started with the card's options. Exit 0 when every lane matches, 1 when one differs.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from moi_demo.core.trace import SamplingSettings, Trace, first_divergence, lane_label

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaneReplay:
    label: str
    recorded: int  # tokens
    replayed: int
    first_difference: int | None  # step of the first different token; None: identical

    @property
    def identical(self) -> bool:
        return self.first_difference is None

    def line(self) -> str:
        if self.identical:
            return f"{self.label}: identical ({self.recorded} tokens)"
        return (
            f"{self.label}: DIFFERS from step {self.first_difference} (recorded {self.recorded} tokens, "
            f"replayed {self.replayed})"
        )


def load_export(path: str | Path) -> tuple[list[Trace], dict[str, Any] | None]:
    """The export's lanes (every kept lane where it has them, else its traces) and its run card (None if none)."""
    data = json.loads(Path(path).read_text())
    lanes = data.get("lanes") or data.get("traces") or []
    if not lanes:
        raise ValueError(f"{path}: no traces to replay")
    return [Trace.from_dict(t) for t in lanes], data.get("run_card")


def _settings(trace: Trace) -> SamplingSettings:
    return SamplingSettings(trace.temperature, trace.top_p, trace.max_tokens, trace.seed)


def replay(engine: Any, traces: list[Trace]) -> list[LaneReplay]:
    """Each recorded lane re-run on `engine` (lanes of one prompt and settings in one batch), compared token by
    token, in the export's order."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(traces):
        groups.setdefault((t.prompt, t.temperature, t.top_p, t.max_tokens, t.seed), []).append(i)
    replayed: dict[int, Trace] = {}
    for members in groups.values():
        recorded = [traces[i] for i in members]
        *_, last = engine.stream_lanes(recorded[0].prompt, [t.config for t in recorded], _settings(recorded[0]))
        replayed.update(zip(members, last, strict=True))
    return [
        LaneReplay(
            lane_label(t.config, full=True), len(t.steps), len(replayed[i].steps), first_divergence(t, replayed[i])
        )
        for i, t in enumerate(traces)
    ]


def engine_options(card: dict[str, Any] | None) -> Any:
    """The recorded engine options (fields this version knows; the rest ignored), or the defaults."""
    from moi_demo.serving.settings import EngineOptions

    recorded = (card or {}).get("engine_options") or {}
    known = {f.name for f in fields(EngineOptions)}
    return EngineOptions(**{k: v for k, v in recorded.items() if k in known})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="moi-demo replay", description=__doc__)
    p.add_argument("file", help="an export: the page's download, /export, or `moi-demo generate --json`")
    p.add_argument("--model", default=None, help="the model (default: the run card's, else the traces')")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.run_card import differences, environment, model_revision

    traces, card = load_export(a.file)
    model = resolve_model(a.model or (card or {}).get("model") or traces[0].model)
    here = {**environment(), "model_revision": model_revision(model)}
    if card is None:
        print("no run card in this export: what produced it is unknown")  # noqa: T201
    else:
        diffs = differences(card, here)
        print(
            "differs from the run card: " + "; ".join(diffs)
            if diffs
            # noqa: T201
            else "same platform, device, versions and model as the run card"
        )
    with MoIEngine(model, engine_options(card)) as engine:
        if card is not None and card.get("dtype") and engine.dtype_name and card["dtype"] != engine.dtype_name:
            print(f"differs from the run card: dtype recorded {card['dtype']}, here {engine.dtype_name}")  # noqa: T201
        results = replay(engine, traces)
    for r in results:
        print(r.line())  # noqa: T201
    same = sum(r.identical for r in results)
    print(f"{same} of {len(results)} lanes identical")  # noqa: T201
    return 0 if same == len(results) else 1

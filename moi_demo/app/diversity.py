"""Diversity: one prompt under N seeds per mode, in one engine batch. MoI samples a real token at every step, so it
keeps the sampler's diversity; this view shows it: each mode's final answers as a histogram, and its token paths as a
tree (an icicle: a node per token prefix, sized by how many of the N runs went through it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from moi_demo.app.callbacks import Callbacks
from moi_demo.app.fields import page_error
from moi_demo.app.plots import COLORS, empty_figure, figure_layout, shown_token
from moi_demo.app.requests import RunRequest, endpoint
from moi_demo.app.runs import Updates, session_of
from moi_demo.core import inputs
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import SamplingSettings, lane_label
from moi_demo.evaluation.tasks import extract_answer
from moi_demo.serving.supervisor import EngineUnavailableError, RunStopped

SEEDS = inputs.Bound("seeds", 2, 16, integer=True)  # N per mode
DEPTH = 8  # tokens of each path the tree shows


@dataclass
class Spread:
    """N runs of each mode: label -> texts, and -> token paths (the first DEPTH tokens, decoded)."""

    texts: dict[str, list[str]]
    paths: dict[str, list[list[str]]]

    def answers(self) -> dict[str, Counter]:
        return {label: Counter(extract_answer(t) or "(none)" for t in texts) for label, texts in self.texts.items()}

    def summary(self) -> dict[str, Any]:
        """Per mode: distinct answers and distinct paths (of the first DEPTH tokens) among the N runs."""
        return {
            label: {
                "runs": len(texts),
                "distinct_answers": len(self.answers()[label]),
                "distinct_paths": len({tuple(p) for p in self.paths[label]}),
                "answers": dict(self.answers()[label].most_common()),
            }
            for label, texts in self.texts.items()
        }


def spread(
    engine: Any, prompt: str, configs: Sequence[MoIConfig], settings: SamplingSettings, n: int, run_id: str
) -> Spread:
    """Every config under seeds settings.seed + j, j < n, in one engine batch (`generate_many`)."""
    base = settings.seed or 0
    jobs = [(prompt, cfg, base + j) for cfg in configs for j in range(n)]
    texts = engine.generate_many(jobs, settings, run_id=run_id)
    tok = engine.tokenizer
    by_label: dict[str, list[str]] = {}
    paths: dict[str, list[list[str]]] = {}
    for i, cfg in enumerate(configs):
        label = lane_label(cfg)
        by_label[label] = texts[i * n : (i + 1) * n]
        paths[label] = [
            [tok.decode([t]) for t in tok.encode(text, add_special_tokens=False)[:DEPTH]] for text in by_label[label]
        ]
    return Spread(by_label, paths)


def answers_chart(s: Spread | None) -> go.Figure:
    if s is None:
        return empty_figure("Final answers over N seeds", "Run the seeds to see this chart")
    fig = go.Figure()
    counts = s.answers()
    colors = [COLORS["standard"], COLORS["moi"], COLORS["sampled"], COLORS["diverge"]]
    for i, (label, answers) in enumerate(counts.items()):
        top = answers.most_common(12)
        fig.add_bar(
            x=[shown_token(a)[:24] for a, _ in top], y=[c for _, c in top], name=label, marker_color=colors[i % 4]
        )
    fig.update_layout(**figure_layout(320, legend_below=80, b=110), title="Final answers over N seeds", barmode="group")
    return fig


def paths_tree(s: Spread | None) -> go.Figure:
    """An icicle of each mode's token paths: a node per prefix, its value the runs through it."""
    if s is None:
        return empty_figure("Token paths over N seeds", "Run the seeds to see this chart")
    ids, labels, parents, values = [], [], [], []
    for label, paths in s.paths.items():
        ids.append(label), labels.append(label), parents.append(""), values.append(len(paths))
        count = Counter(tuple(p[: d + 1]) for p in paths for d in range(len(p)))
        for prefix, c in count.items():
            ids.append(f"{label}|{'|'.join(prefix)}")
            labels.append(f"{shown_token(prefix[-1])} ({c})")
            parents.append(label if len(prefix) == 1 else f"{label}|{'|'.join(prefix[:-1])}")
            values.append(c)
    fig = go.Figure(go.Icicle(ids=ids, labels=labels, parents=parents, values=values, branchvalues="total"))
    fig.update_layout(**figure_layout(420, t=40, l=10, r=10, b=10), title="Token paths: runs through each prefix")
    return fig


class Diversity:
    """The diversity view's callback, on the side-by-side tab's page, engine and runs (`Callbacks`)."""

    def __init__(self, tab: Callbacks):
        self.engine, self.page, self.runs, self.max_new_tokens = tab.engine, tab.page, tab.runs, tab.max_new_tokens
        self.outputs: list[Any] = []  # the answers chart, the tree, the summary (layout.py)

    @endpoint(RunRequest, (("seeds", 8),))
    def diversity(self, req: RunRequest, seeds: Any = 8, request: gr.Request = None) -> Iterator[Updates]:
        """The standard lane and this MoI lane, each under `seeds` seeds (2 to 16) in one engine batch: their final
        answers, their token paths, and per mode the distinct answers and paths (JSON)."""
        try:
            prompt, moi_cfg, settings = req.parse(self.max_new_tokens)
            n = SEEDS.check(seeds)
        except InputError as e:
            raise page_error(e) from None
        configs = [MoIConfig("standard", moi_cfg.beta, moi_cfg.top_k), moi_cfg]
        run_id = self.runs.start(session_of(request), "diversity")
        try:
            s = spread(self.engine, prompt, configs, settings, n, run_id)
        except InputError as e:
            raise page_error(e) from None
        except RunStopped:
            return
        except EngineUnavailableError as e:
            raise gr.Error(str(e), title="Engine unavailable") from None
        chart, tree, summary = self.outputs
        note = {"greedy": "temperature 0: every seed decodes the same"} if settings.temperature == 0 else {}
        yield {chart: answers_chart(s), tree: paths_tree(s), summary: {**s.summary(), **note}}

"""The same-tokens comparison's views (serving/compare.py), pure functions: KL(standard || MoI) and the top-k
overlap per step, and one step's two top-k side by side (HTML)."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from moi_demo.app.plots import COLORS, empty_figure, figure_layout, shown_token
from moi_demo.serving.compare import Comparison

COMPARE_CSS = """
.moi-compare table { display: inline-table; margin-right: 2em; border-collapse: collapse; font-size: 13px; }
.moi-compare caption { font-weight: 600; text-align: left; }
.moi-compare td { padding: 1px 8px; }
.moi-compare tr.taken td { outline: 2px solid #f59e0b; }
"""


def comparison_chart(comp: Comparison | None) -> go.Figure:
    """KL per step (left axis) and the share of the standard top-k kept in MoI's (right axis), on the same tokens."""
    if comp is None or not comp.steps:
        return empty_figure("Same tokens: KL(standard || MoI) per step", "Compare to see this chart")
    x = list(range(len(comp.steps)))
    fig = go.Figure()
    fig.add_scatter(x=x, y=[round(d.kl, 5) for d in comp.steps], name="KL(standard || MoI)", line_color=COLORS["moi"])
    fig.add_scatter(
        x=x,
        y=[round(d.overlap, 4) for d in comp.steps],
        name="top-k overlap",
        yaxis="y2",
        line=dict(color=COLORS["standard"], dash="dot"),
    )
    fig.update_layout(
        **figure_layout(320, legend_below=68, b=95, r=60),
        title="Same tokens: what the mixture does to the distribution",
        xaxis_title="step (the standard lane's tokens, fed to both)",
        yaxis_title="KL over the union of the top-k (nats)",
        yaxis2=dict(overlaying="y", side="right", range=[0, 1.05], title="overlap", showgrid=False),
    )
    return fig


def comparison_panel(comp: Comparison | None, step: int) -> str:
    """Step `step`'s two top-k, side by side: token and probability, the token both lanes took outlined."""
    if comp is None or not comp.steps:
        return "<p class='moi-compare-empty'>Compare to see both top-k on the same tokens</p>"
    i = min(max(int(step), 0), len(comp.steps) - 1)
    s, m, d = comp.standard.steps[i], comp.moi.steps[i], comp.steps[i]

    def column(lane_step, title: str) -> str:
        tokens = lane_step.topk_tokens or [""] * len(lane_step.topk_ids)
        rows = "".join(
            f"<tr class='{'taken' if tid == lane_step.token_id else ''}'><td>{html.escape(shown_token(tok))}</td>"
            f"<td>{math.exp(lp):.3f}</td></tr>"
            for tid, tok, lp in zip(lane_step.topk_ids, tokens, lane_step.topk_logprobs, strict=True)
        )
        return f"<table class='moi-compare-col'><caption>{title}</caption>{rows}</table>"

    return (
        f"<div class='moi-compare' data-step='{i}'><p>Step {i}: both lanes take {html.escape(shown_token(s.token))!s}; "
        f"KL = {d.kl:.4f}, top-k overlap {d.overlap:.0%}{' (bounded)' if d.bounded else ''}</p>"
        f"{column(s, 'Standard')}{column(m, 'MoI, same tokens')}</div>"
    )

"""Pure functions from traces to plotly figures, and to the token map's HTML (no engine, no UI state).

Views: the generated tokens of both lanes coloured by p(sampled) or by H (HTML); one step's top-k prior with the
sampled token marked and, in the MoI lane, the posterior mix weights beside it; a heatmap of mix weights over
steps x candidate rank; H and the weight kept on the sampled token over steps. The first step where the two
lanes diverge is marked on every chart that has a step axis.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from moi_demo.app.explorer import summarize
from moi_demo.core.trace import Step, Trace, first_divergence, lane_label

COLORS = {
    "standard": "#64748b",
    "moi": "#7c3aed",
    "prior": "#94a3b8",
    "posterior": "#7c3aed",
    "sampled": "#f59e0b",
    "diverge": "#ef4444",
}
# plotly_white's look for 2-D charts, without the 7 KB of 3-D, polar, geo and colour-scale defaults that every
# figure's JSON would otherwise carry to the page. Fixed margins, no automargin: automargin draws a figure, measures
# its labels and draws it again (each figure drew in about half the time without it, plotly alone in Chromium).
_AXIS = dict(
    gridcolor="#EBF0F8", linecolor="#EBF0F8", zerolinecolor="#EBF0F8", zerolinewidth=2, ticks="", automargin=False
)
TEMPLATE = go.layout.Template(
    layout=dict(
        paper_bgcolor="white",
        plot_bgcolor="white",
        font=dict(color="#2a3f5f"),
        hovermode="closest",
        hoverlabel=dict(align="left"),
        title=dict(x=0.05),
        xaxis=_AXIS,
        yaxis=_AXIS,
        colorway=["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880"],
    )
)
_LAYOUT = dict(template=TEMPLATE, margin=dict(l=60, r=20, t=50, b=50), font=dict(size=12))


def figure_layout(height: int, legend_below: int | None = None, **margin: int) -> dict:
    """_LAYOUT at `height` px, with `margin` (l, r, t, b) overridden. `legend_below`: a horizontal legend, its top
    that many px under the plot area (below the tick labels and the axis title: the margins are fixed)."""
    m = {**_LAYOUT["margin"], **margin}
    out = {**_LAYOUT, "height": height, "margin": m}
    if legend_below is not None:
        out["legend"] = dict(orientation="h", yanchor="top", x=0, y=-legend_below / (height - m["t"] - m["b"]))
    return out


def _label(trace: Trace) -> str:
    return lane_label(trace.config)


def shown_token(token: str) -> str:
    text = token.replace("\n", "⏎").replace(" ", "·")
    return text[:10] if text else "∅"


def _unique(names: list[str]) -> list[str]:
    """Bar categories must differ: two tokens that display alike get a suffix."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def empty_figure(title: str, message: str = "Generate to see this chart") -> go.Figure:
    fig = go.Figure(layout={**figure_layout(260), "title": title})
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#94a3b8"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _mark_divergence(fig: go.Figure, diverge: int | None, **kwargs) -> None:
    if diverge is not None:
        fig.add_vline(x=diverge, line=dict(color=COLORS["diverge"], dash="dash", width=1.5), **kwargs)
        fig.add_annotation(
            x=diverge,
            y=1.02,
            yref="paper",
            text=f"lanes diverge at step {diverge}",
            showarrow=False,
            font=dict(color=COLORS["diverge"], size=11),
            xanchor="left",
        )


_VIRIDIS = sample_colorscale("Viridis", [i / 100 for i in range(101)])  # 'rgb(r, g, b)' at 0, 0.01, ..., 1
TOKEN_MAP_CSS = """
.moi-tokens { font: 13px/1.9 ui-monospace, SFMono-Regular, Menlo, monospace; }
.moi-tokens h4 { margin: 6px 0 2px; font: 600 13px system-ui, sans-serif; }
.moi-tokens .lane { display: flex; flex-wrap: wrap; gap: 2px 1px; }
.moi-tokens .t { padding: 1px 2px; border-radius: 3px; white-space: pre; }
.moi-tokens .sel { outline: 2px solid #f59e0b; }
.moi-tokens .div { box-shadow: inset 0 -3px 0 #ef4444; }
.moi-tokens .scale { display: inline-block; width: 160px; height: 10px; vertical-align: middle; margin: 0 6px;
  background: linear-gradient(to right, SCALE); }
""".replace("SCALE", ", ".join(_VIRIDIS[::10]))  # the legend: the tokens' own colours at 0, 0.1, ..., 1


NO_TRACES = (Trace("standard", "standard", 1.0, 1), Trace("moi", "moi", 1.0, 1))


def _text(value: str) -> str:
    """HTML-escaped, and no `$`, `{`, `}` left for Gradio's HTML template to read as its own syntax."""
    return html.escape(value).replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


def token_map(standard: Trace, moi: Trace, color_by: str = "p", selected: int | None = None) -> str:
    """Both lanes' tokens as text, each on the Viridis colour of p(sampled) (`color_by="p"`) or of H
    ("entropy"), the inspected step outlined, the first divergence underlined in red; a token's title (hover)
    gives its step, p and H. HTML, not a plotly figure: 256 text cells cost the page a long task to lay out."""
    if not standard.steps and not moi.steps:
        return '<div class="moi-tokens"><em>Generate to see the tokens</em></div>'
    metric = (lambda s: s.p_sampled) if color_by == "p" else (lambda s: s.entropy)
    name = "p(sampled token)" if color_by == "p" else "normalised entropy H"
    diverge = first_divergence(standard, moi)
    parts = [
        f'<div class="moi-tokens"><div>Coloured by {name}: 0<span class="scale"></span>1'
        + (f"; lanes diverge at step {diverge} (underlined)" if diverge is not None else "")
        + "</div>"
    ]
    for trace in (standard, moi):
        parts.append(f'<h4>{_text(_label(trace))}</h4><div class="lane">')
        for s in trace.steps:
            value = min(max(metric(s), 0.0), 1.0)
            marks = (" sel" if s.index == selected else "") + (" div" if s.index == diverge else "")
            title = f"step {s.index}: {s.token!r}, p = {s.p_sampled:.3f}, H = {s.entropy:.3f}"
            parts.append(
                f'<span class="t{marks}" style="background:{_VIRIDIS[round(value * 100)]};'
                f'color:{"#fff" if value < 0.55 else "#111"}" title="{_text(title)}">'
                f"{_text(shown_token(s.token))}</span>"
            )
        parts.append("</div>")
    return "".join(parts) + "</div>"


def _step(trace: Trace, index: int) -> Step | None:
    return trace.steps[index] if 0 <= index < len(trace.steps) else None


def step_distribution(standard: Trace, moi: Trace, index: int) -> go.Figure:
    """One step in each lane: the top-k prior p, the sampled token marked, and in the MoI lane the posterior
    mix weights w beside p (what was fed back instead of the sampled token's embedding)."""
    steps = [_step(standard, index), _step(moi, index)]
    if all(s is None for s in steps):
        return empty_figure("Inside a step")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[
            f"{_label(t)}: step {index}" + (f", sampled {s.token!r}" if s else " (ended)")
            for t, s in zip((standard, moi), steps, strict=True)
        ],
    )
    for col, step in enumerate(steps, start=1):
        if step is None:
            continue
        ids = list(step.topk_ids)
        prior = list(step.prior)
        if not step.sampled_in_topk:  # the sampled token came from outside the top-k: show it too
            ids.append(step.token_id)
            prior.append(0.0)
        names = _unique([shown_token(step.token_text(t)) for t in ids])
        sampled_line = [3 if t == step.token_id else 0 for t in ids]
        fig.add_trace(
            go.Bar(
                x=names,
                y=prior,
                name="prior p (top-k)",
                marker=dict(color=COLORS["prior"], line=dict(color=COLORS["sampled"], width=sampled_line)),
                showlegend=col == 1,
                hovertemplate="%{x}: p = %{y:.3f}<extra></extra>",
                legendgroup="prior",
            ),
            row=1,
            col=col,
        )
        if step.weights is not None and step.candidate_ids is not None:
            w = dict(zip(step.candidate_ids, step.weights, strict=True))
            fig.add_trace(
                go.Bar(
                    x=names,
                    y=[w.get(t, 0.0) for t in ids],
                    name="posterior w (fed back)",
                    marker=dict(color=COLORS["posterior"], line=dict(color=COLORS["sampled"], width=sampled_line)),
                    hovertemplate="%{x}: w = %{y:.3f}<extra></extra>",
                    legendgroup="posterior",
                ),
                row=1,
                col=col,
            )
        axis = "" if col == 1 else str(col)
        fig.add_annotation(
            text=f"H = {step.entropy:.2f}",
            xref=f"x{axis} domain",
            yref=f"y{axis} domain",
            x=0.98,
            y=0.95,
            showarrow=False,
        )
    fig.update_layout(
        **figure_layout(380, legend_below=75, b=105),
        barmode="group",
        yaxis=dict(range=[0, 1], title="probability / weight"),
        yaxis2=dict(range=[0, 1]),
    )
    fig.update_xaxes(tickangle=-45)
    return fig


def weights_heatmap(moi: Trace) -> go.Figure:
    """Mix weights over steps x candidate rank (rank of the top-k prior; a last row for a sampled token
    outside the top-k)."""
    steps = [s for s in moi.steps if s.weights is not None]
    if not steps:
        return empty_figure("Mix weights over steps")
    k = moi.top_k
    z = [[0.0] * len(steps) for _ in range(k + 1)]
    for j, s in enumerate(steps):
        w = dict(zip(s.candidate_ids or [], s.weights or [], strict=True))
        for rank, tid in enumerate(s.topk_ids):
            z[rank][j] = round(w.get(tid, 0.0), 4)  # 4 digits: what the eye and the hover need, a third of the JSON
        if not s.sampled_in_topk:
            z[k][j] = round(w.get(s.token_id, 0.0), 4)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[s.index for s in steps],
            y=[f"rank {r + 1}" for r in range(k)] + ["y outside top-k"],
            colorscale="Magma",
            zmin=0,
            zmax=1,
            colorbar=dict(title="w"),
            hovertemplate="step %{x}, %{y}: w = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        **figure_layout(320, l=95),
        title=f"Mix weights fed back, {_label(moi)}",
        xaxis_title="step",
        yaxis=dict(autorange="reversed"),
    )
    return fig


def entropy_chart(
    standard: Trace, moi: Trace, diverge: int | None = None, fed_cos: list[float] | None = None
) -> go.Figure:
    """H over steps for both lanes, the weight kept on the sampled token (1 in the standard lane) and, where given,
    cos(fed input, E[sampled]) per step of the MoI lane (what the model read back, against the sample's own)."""
    if not standard.steps and not moi.steps:
        return empty_figure("Entropy and kept weight")
    fig = go.Figure()
    for trace in (standard, moi):
        fig.add_trace(
            go.Scatter(
                x=[s.index for s in trace.steps],
                y=[round(s.entropy, 4) for s in trace.steps],
                mode="lines",
                name=f"H, {_label(trace)}",
                line=dict(color=COLORS[trace.lane]),
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[s.index for s in moi.steps],
            y=[round(s.sampled_weight, 4) for s in moi.steps],
            mode="lines",
            name=f"w on sampled token, {_label(moi)}",
            line=dict(color=COLORS["sampled"], dash="dot"),
        )
    )
    if fed_cos:
        fig.add_trace(
            go.Scatter(
                x=[s.index for s in moi.steps],
                y=[round(c, 4) for c in fed_cos],
                mode="lines",
                name=f"cos(fed, E[sampled]), {_label(moi)}",
                line=dict(color=COLORS["moi"], dash="dash", width=1),
            )
        )
    _mark_divergence(fig, first_divergence(standard, moi) if diverge is None else diverge)
    fig.update_layout(
        **figure_layout(340, legend_below=68, b=95),
        title="Normalised entropy H and the weight kept on the sampled token",
        xaxis_title="step",
        yaxis=dict(range=[0, 1.05]),
    )
    return fig


# -- the beta sweep -------------------------------------------------------------------------------------


def _sweep_color(i: int, n: int) -> str:
    """Lanes in sweep order, light to dark purple."""
    t = i / max(n - 1, 1)
    return f"rgb({int(196 - 120 * t)},{int(181 - 143 * t)},{int(253 - 16 * t)})"


def sweep_summary(standard: Trace, lanes: list[Trace]) -> go.Figure:
    """Per lane of a sweep: the step at which it first leaves the standard lane's tokens, and the mean weight kept
    on the sampled token and the mean H over its steps."""
    if not lanes:
        return empty_figure("Beta sweep", "Sweep beta to see this chart")
    summaries = [summarize(standard, t) for t in lanes]
    labels = ["direct" if t.mode == "direct" else f"{t.beta:g}" for t in lanes]  # short: never rotated
    diverge = [s.diverge for s in summaries]
    heights = [len(t.steps) if d is None else d for t, d in zip(lanes, diverge, strict=True)]
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.15,
        subplot_titles=["First step unlike standard", "Mean w on sample, mean H"],
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=heights,
            text=["never" if d is None else str(d) for d in diverge],
            textposition="outside",
            cliponaxis=False,
            marker=dict(color=[COLORS["prior"] if d is None else COLORS["diverge"] for d in diverge]),
            name="first divergence",
            showlegend=False,
            hovertemplate="beta %{x}: %{text}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for name, values, color in (
        ("mean w on sampled token", [s.mean_sampled_weight for s in summaries], COLORS["sampled"]),
        ("mean H", [s.mean_entropy for s in summaries], COLORS["moi"]),
    ):
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=values,
                mode="lines+markers",
                name=name,
                line=dict(color=color),
                hovertemplate="beta %{x}: %{y:.3f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_layout(**figure_layout(340, legend_below=68, b=95))
    fig.update_xaxes(title_text="beta", type="category")
    fig.update_yaxes(title_text="step", range=[0, max(heights, default=1) * 1.15], row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    return fig


def sweep_curves(lanes: list[Trace]) -> go.Figure:
    """The weight kept on the sampled token at every step, one line per lane. SVG: one path per lane draws in a
    few ms, where WebGL's context set-up alone was a 200 ms task of the page (software GL, no GPU)."""
    if not lanes:
        return empty_figure("Weight on the sampled token per step", "Sweep beta to see this chart")
    fig = go.Figure()
    for i, t in enumerate(lanes):
        fig.add_trace(
            go.Scatter(
                x=[s.index for s in t.steps],
                y=[round(s.sampled_weight, 4) for s in t.steps],
                mode="lines",
                name=_label(t),
                line=dict(color=_sweep_color(i, len(lanes))),
            )
        )
    fig.update_layout(
        **figure_layout(340, r=150),
        xaxis_title="step",
        yaxis=dict(range=[0, 1.05]),
        title="Weight kept on the sampled token, per step and beta",
        legend=dict(x=1.02, xanchor="left", y=1, yanchor="top"),
    )  # 8 lanes: a column at the right
    return fig


READS_CSS = """
.moi-reads table { border-collapse: collapse; font-size: 0.9em; }
.moi-reads th, .moi-reads td { padding: 2px 8px; text-align: left; vertical-align: top; }
.moi-reads .cos { font-variant-numeric: tabular-nums; }
.moi-reads .near { margin-right: 8px; white-space: nowrap; }
"""


def reads_panel(inspection: list[dict] | None, message: str = "Generate, then pick a step") -> str:
    """What the model read back at the inspected step, per lane: cos(fed input, E[sampled]) and the vocabulary
    tokens nearest to the fed input (engine.inspect's result)."""
    if not inspection:
        return f'<div class="moi-reads"><p>{_text(message)}</p></div>'
    rows = []
    for lane in inspection:
        near = " ".join(
            f'<span class="near" title="id {n["id"]}"><code>{_text(shown_token(n["token"]))}</code> '
            f"{n['cos']:.3f}</span>"
            for n in lane["nearest"]
        )
        rows.append(
            f'<tr class="lane-{lane["lane"]}"><th>{_text(lane["label"])}</th>'
            f'<td class="cos">{lane["cos_at_step"]:.4f}</td><td>{near}</td></tr>'
        )
    step = inspection[0]["step"]
    return (
        f'<div class="moi-reads"><table><caption>What the model reads back after step {step}: the fed input '
        f"embedding</caption><tr><th>lane</th><th>cos(fed, E[sampled])</th><th>nearest vocabulary tokens "
        f"(cosine)</th></tr>{''.join(rows)}</table></div>"
    )


def pair_views(
    standard: Trace, moi: Trace, color_by: str = "p", inspection: list[dict] | None = None
) -> list[Callable[[], go.Figure | str]]:
    """The views of a pair as the page first shows them (the inspected step: the first divergence), each built when
    called: token map, inside a step, mix weights, entropy, and what the model reads (given `inspection`)."""
    diverge = first_divergence(standard, moi)
    selected = diverge if diverge is not None else 0
    fed_cos = next((lane["cos"] for lane in inspection or [] if lane["lane"] == "moi"), None)
    return [
        lambda: token_map(standard, moi, color_by, selected),
        lambda: step_distribution(standard, moi, selected),
        lambda: weights_heatmap(moi),
        lambda: entropy_chart(standard, moi, diverge, fed_cos),
        lambda: reads_panel(inspection),
    ]

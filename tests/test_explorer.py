"""explorer.py: the beta sweep's input, lane reuse and the sweep's summaries, on hand-built traces (no engine)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from moi_demo.app import explorer, plots
from moi_demo.app.explorer import Lanes, lane_key, parse_betas, standard_key, summarize, with_top_k
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.plain import step_weights
from moi_demo.core.trace import SamplingSettings, Step, Trace
from tests.test_plots import make_trace

KEY = standard_key("model", "prompt", SamplingSettings(max_tokens=8))


def test_parse_betas_default_order_and_direct():
    configs = parse_betas(explorer.DEFAULT_SWEEP, 20)
    assert [(c.mode, c.beta) for c in configs] == [
        ("moi", 0.0),
        ("moi", 0.25),
        ("moi", 0.5),
        ("moi", 1.0),
        ("moi", 2.0),
        ("moi", 4.0),
        ("direct", 0.0),
    ]
    assert all(c.top_k == 20 for c in configs)
    assert [(c.mode, c.beta) for c in parse_betas(" 1 ; 0.5, 1.0 ,DIRECT,direct ", 5)] == [
        ("moi", 1.0),
        ("moi", 0.5),
        ("direct", 0.0),
    ]  # duplicates dropped, order kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "betas: must list at least one beta"),
        (" , ;", "betas: must list at least one beta"),
        ("1, 4.5", "betas: each beta must be from 0 to 4; got 4.5"),
        ("-0.5", "betas: each beta must be from 0 to 4; got -0.5"),
        ("nan", "betas: each beta must be from 0 to 4; got nan"),
        ("1, two", "betas: each entry must be a beta from 0 to 4, `direct`, `gumbel` or `multiplex`; got 'two'"),
        (",".join(str(i / 10) for i in range(9)), "betas: at most 8 lanes in one sweep; got 9"),
        (None, "betas: must be text"),
    ],
)
def test_parse_betas_errors_name_the_field(text, message):
    with pytest.raises(InputError) as e:
        parse_betas(text, 20)
    assert str(e.value).startswith(message) and e.value.field == "betas"


def test_lane_key_ignores_beta_for_direct_mixture():
    assert lane_key(MoIConfig("direct", 0.0, 5)) == lane_key(MoIConfig("direct", 3.0, 5))
    assert lane_key(MoIConfig("moi", 0.5, 5)) != lane_key(MoIConfig("moi", 1.0, 5))
    assert lane_key(MoIConfig("moi", 0.5, 5)) != lane_key(MoIConfig("moi", 0.5, 6))


def test_with_top_k_trims_candidates_and_recomputes_entropy():
    standard = make_trace("standard", [10, 12], MoIConfig("standard", 1.0, 3))
    trimmed = with_top_k(standard, 2)
    assert trimmed.top_k == 2 and standard.top_k == 3  # a copy: the kept lane is unchanged
    step = trimmed.steps[1]
    assert step.topk_ids == [10, 11] and step.topk_tokens == ["a", "b"] and step.token_id == 12
    p = [0.6 / 0.9, 0.3 / 0.9]  # the top-2 renormalised
    assert step.entropy == pytest.approx(-sum(x * math.log(x) for x in p) / math.log(2))
    assert standard.steps[1].entropy == pytest.approx(
        step_weights([math.log(0.6), math.log(0.3), math.log(0.1)], [10, 11, 12], 12, standard.config)[2]
    )
    assert with_top_k(standard, 3) is standard and with_top_k(standard, 5) is standard


def _finished(trace: Trace, reason: str = "length") -> Trace:
    trace.finish_reason = reason
    return trace


def test_lanes_reuse_the_standard_lane_only_for_the_same_inputs():
    lanes = Lanes()
    standard = _finished(make_trace("standard", [10, 10], MoIConfig("standard", 1.0, 3)))
    moi = _finished(make_trace("moi", [10, 11], MoIConfig("moi", 1.0, 3)))
    lanes.keep(KEY, standard, [moi])
    assert lanes.reusable_standard(KEY, 3) is standard
    assert lanes.reusable_standard(KEY, 2).top_k == 2  # trimmed to a smaller top-k
    assert lanes.reusable_standard(KEY, 4) is None  # the kept lane has no 4th candidate
    other = standard_key("model", "prompt", SamplingSettings(max_tokens=8, seed=1))
    assert lanes.reusable_standard(other, 3) is None and lanes.cached(other, moi.config) is None
    assert lanes.cached(KEY, MoIConfig("moi", 1.0, 3)) is moi and lanes.cached(KEY, MoIConfig("moi", 2.0, 3)) is None
    lanes.keep(other, None, [])  # a new prompt or setting starts afresh
    assert lanes.standard is None and not lanes.mixed


def test_lanes_do_not_keep_stopped_runs_and_cap_their_number():
    lanes = Lanes()
    stopped = _finished(make_trace("standard", [10], MoIConfig("standard", 1.0, 3)), "abort")
    lanes.keep(KEY, stopped, [_finished(make_trace("moi", [10], MoIConfig("moi", 1.0, 3)), "abort")])
    assert lanes.reusable_standard(KEY, 3) is None and not lanes.mixed
    for i in range(explorer.MAX_KEPT_LANES + 3):
        lanes.keep(KEY, None, [_finished(make_trace("moi", [10], MoIConfig("moi", i / 10, 3)))])
    assert len(lanes.mixed) == explorer.MAX_KEPT_LANES
    assert lanes.cached(KEY, MoIConfig("moi", 0.0, 3)) is None  # the oldest went first
    assert lanes.cached(KEY, MoIConfig("moi", (explorer.MAX_KEPT_LANES + 2) / 10, 3)) is not None


def test_export_has_the_pair_shown_and_every_lane():
    lanes = Lanes()
    standard = _finished(make_trace("standard", [10, 10], MoIConfig("standard", 1.0, 3)))
    a = _finished(make_trace("moi", [10, 11], MoIConfig("moi", 0.0, 3)))
    b = _finished(make_trace("moi", [10, 10], MoIConfig("direct", 0.0, 3)))
    lanes.keep(KEY, standard, [a, b])
    lanes.show(standard, b)
    out = lanes.export()
    assert [t["mode"] for t in out["traces"]] == ["standard", "direct"]
    assert [(t["mode"], t["beta"]) for t in out["lanes"]] == [("standard", 1.0), ("moi", 0.0), ("direct", 0.0)]
    assert Trace.from_dict(out["lanes"][1]).token_ids == [10, 11]


def test_summaries_and_sweep_figures():
    standard = make_trace("standard", [10, 10, 11, 10], MoIConfig("standard", 1.0, 3))
    same = make_trace("moi", [10, 10, 11, 10], MoIConfig("moi", 4.0, 3))
    differs = make_trace("moi", [10, 12, 11], MoIConfig("moi", 0.0, 3))
    s_same, s_diff = summarize(standard, same), summarize(standard, differs)
    assert (s_same.diverge, s_diff.diverge, s_diff.tokens) == (None, 1, 3)
    assert s_same.mean_sampled_weight == pytest.approx(sum(s.sampled_weight for s in same.steps) / 4)
    assert s_diff.mean_entropy == pytest.approx(sum(s.entropy for s in differs.steps) / 3)
    fig = plots.sweep_summary(standard, [same, differs])
    bars, kept, entropy = fig.data
    assert list(bars.x) == ["4", "0"] and list(bars.text) == ["never", "1"]  # beta on a category axis
    assert list(bars.y) == [4, 1]  # "never" drawn at the lane's length
    assert list(kept.y) == pytest.approx([s_same.mean_sampled_weight, s_diff.mean_sampled_weight])
    assert list(entropy.y) == pytest.approx([s_same.mean_entropy, s_diff.mean_entropy])
    curves = plots.sweep_curves([same, differs])
    assert [t.type for t in curves.data] == ["scatter", "scatter"]  # SVG: no WebGL context for 8 lines
    assert list(curves.data[1].y) == pytest.approx([s.sampled_weight for s in differs.steps], abs=1e-4)
    assert "Sweep beta" in plots.sweep_summary(standard, []).layout.annotations[0].text


def test_step_is_unchanged_by_trimming():
    step = Step(0, 1, "x", -0.1, [1, 2, 3], [-0.1, -2.0, -3.0], 0.5)
    trimmed = with_top_k(Trace("standard", "standard", 1.0, 3, steps=[step]), 1)
    assert step.topk_ids == [1, 2, 3] and trimmed.steps[0].topk_ids == [1] and trimmed.steps[0].entropy == 0.0


def test_paced_shows_each_lanes_first_token_at_once_then_coalesces():
    """The page's updates: at most one per interval, except that a lane's first token is never held back (the
    second lane of a pair starts a step after the first)."""
    from moi_demo.app.runs import paced as _paced

    standard = make_trace("standard", [10, 11, 10], MoIConfig("standard", 1.0, 3))
    moi = make_trace("moi", [10, 10, 11], MoIConfig("moi", 1.0, 3))

    def upto(trace: Trace, n: int) -> Trace:
        return dataclasses.replace(trace, steps=trace.steps[:n])

    grown = [(upto(standard, n), upto(moi, m)) for n, m in ((1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (3, 3))]
    shown = [tuple(len(t.steps) for t in traces) for traces in _paced(iter(grown), interval=3600.0)]
    assert shown == [(1, 0), (2, 1)]  # the first update, then the MoI lane's first token; the rest coalesced
    assert [tuple(len(t.steps) for t in traces) for traces in _paced(iter(grown), interval=0.0)] == [
        (1, 0),
        (2, 0),
        (2, 1),
        (3, 1),
        (3, 2),
        (3, 3),
    ]


def test_a_run_the_page_numbered_before_a_started_one_never_supersedes_it():
    """The page numbers its run events in the order they happened; their runs start on worker threads in any order.
    A run numbered before one that already started is dropped (None) and aborts nothing; a newer number, or an API
    client's 0, supersedes and aborts the session's older runs. Sessions and kinds are apart."""
    from moi_demo.app.runs import Runs

    class Aborts:  # what Runs asks of the engine here: abort a session's runs of a kind
        def __init__(self):
            self.cancelled: list[str] = []

        def cancel(self, prefix: str) -> None:
            self.cancelled.append(prefix)

    engine = Aborts()
    cb = Runs(engine)  # type: ignore[arg-type]
    newest = cb.start("a", "run", 5)  # the drag's last value started first
    assert newest == "a/run/1" and cb.current(newest) and engine.cancelled == ["a/run"]
    assert cb.start("a", "run", 4) is None  # its previous value, started after it
    assert cb.start("a", "run", 5) is None  # the same event twice
    assert cb.current(newest) and engine.cancelled == ["a/run"]  # nothing aborted
    assert cb.start("b", "run", 1) == "b/run/1" and cb.start("a", "sweep", 1) == "a/sweep/1"
    api = cb.start("a", "run", 0)  # an API client: order of arrival
    assert api == "a/run/2" and not cb.current(newest) and cb.current(api)
    assert cb.start("a", "run", 4) is None  # still older than the page's newest
    later = cb.start("a", "run", 6)
    assert later == "a/run/3" and cb.current(later) and not cb.current(api)
    assert engine.cancelled == ["a/run", "b/run", "a/sweep", "a/run", "a/run"]

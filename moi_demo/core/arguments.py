"""Command-line arguments shared by moi-demo's commands (`generate`, `sweep`, `eval`): MoI's switches, the gate and the
rival modes' settings."""

from __future__ import annotations

import argparse
from typing import Any

from moi_demo.core import inputs
from moi_demo.core.config import DEFAULT_GATE_H, DEFAULT_SAMPLES, DEFAULT_TAU, ENTROPIES, GATES, PRIORS


def add_switches(p: argparse.ArgumentParser) -> None:
    """MoI's design choices (core/mixing.py), the defaults the paper's."""
    p.add_argument(
        "--entropy",
        choices=list(ENTROPIES),
        default="top_k",
        help="H of the top-k prior over log k (default), or of the full distribution over log |V|",
    )
    p.add_argument(
        "--prior",
        choices=list(PRIORS),
        default="raw",
        help="raw temperature-1 top-k (default), or the request's own after temperature and top-p",
    )
    p.add_argument("--noise", type=float, default=0.0, help="Gumbel scale on the prior's logits, seeded (default 0)")
    p.add_argument(
        "--gate",
        choices=list(GATES),
        default="none",
        help="mix at every step (none, default), only where H >= --gate-h (high, as SeLaR) or H <= it (low)",
    )
    p.add_argument("--gate-h", type=float, default=DEFAULT_GATE_H, help="the gate's threshold on H (default 0.5)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="gumbel mode's temperature (default 0.5)")
    p.add_argument(
        "--multiplex-samples",
        dest="multiplex_samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help="multiplex mode's draws per step (moi_samples, default 3)",
    )


def switches_of(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `MoIConfig.with_switches`, checked (an InputError names the field)."""
    return {
        "entropy": args.entropy,
        "prior": args.prior,
        "noise": inputs.NOISE.check(args.noise),
        "gate": inputs.check_choice(args.gate, "gate", GATES),
        "gate_h": inputs.GATE_H.check(args.gate_h),
        "tau": inputs.TAU.check(args.tau),
        "samples": inputs.SAMPLES.check(args.multiplex_samples),
    }

"""Command-line arguments shared by moi-demo's commands (`generate`, `sweep`, `eval`): MoI's switches."""

from __future__ import annotations

import argparse
from typing import Any

from moi_demo.core import inputs
from moi_demo.core.config import ENTROPIES, PRIORS


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


def switches_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"entropy": args.entropy, "prior": args.prior, "noise": inputs.NOISE.check(args.noise)}

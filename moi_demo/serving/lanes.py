"""A lane's requests and trace: the SamplingParams a lane sends to vLLM, how its streamed outputs become Steps (with
the weights the plugin fed), and what the inspector asks the workers of it and makes of their answers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.inspection import NEAREST
from moi_demo.core.plain import prior_from_weights
from moi_demo.core.trace import SamplingSettings, Step, Trace, lane_label

logger = logging.getLogger(__name__)


def sampling_params(
    moi: MoIConfig,
    settings: SamplingSettings,
    ignore_eos: bool = False,
    logprobs: bool = True,
    wide: int = 0,
    stream: bool = True,
) -> Any:
    """Streamed (delta) params, or with `stream=False` the final output only (a batch job: no per-step
    output objects for hundreds of sequences); `logprobs` returns the top-k raw log-probs (top-`wide` where wider:
    a comparison's) the traces are
    built from."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
        logprobs=max(moi.top_k, wide) if logprobs else None,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        ignore_eos=ignore_eos,
        # a streamed switched lane keeps its record for the page (its weights cannot be rebuilt from log-probs)
        extra_args=(dataclasses.replace(moi, keep_record=True) if moi.switched and stream else moi).extra_args(),
    )


def steps_from_output(completion: Any, first_index: int, top_k: int, wide: int = 0) -> list[Step]:
    """Steps from a vLLM CompletionOutput delta: the sampled ids and their top-k raw log-probs (with `wide`, the
    top-`wide` (id, log-prob) pairs in rank order, as `Step.ranked`; not the sampled token's own entry, which vLLM
    adds below them when it ranks lower: the floor a comparison bounds a missing entry with is the `wide`-th)."""
    steps = []
    for i, (token, logprobs) in enumerate(zip(completion.token_ids, completion.logprobs or [], strict=False)):
        ranked = sorted(
            ((lp.rank, tid, lp) for tid, lp in logprobs.items() if lp.rank is not None), key=lambda r: (r[0], r[1])
        )
        top = [(tid, lp) for rank, tid, lp in ranked if rank <= top_k][:top_k]
        sampled = logprobs[token]
        steps.append(
            Step(
                index=first_index + i,
                token_id=int(token),
                token=sampled.decoded_token or "",
                logprob=float(sampled.logprob),
                topk_ids=[t for t, _ in top],
                topk_logprobs=[float(lp.logprob) for _, lp in top],
                entropy=0.0,
                topk_tokens=[lp.decoded_token or "" for _, lp in top],
                ranked=[(tid, float(lp.logprob)) for rank, tid, lp in ranked if rank <= wide] if wide else None,
            )
        )
    return steps


def complete_step(trace: Trace, step: Step) -> Step:
    """Fill H and, in a mixing lane, the weights the plugin fed back (recomputed with mixing.py). A switched lane's
    H and weights need what only the sampler saw: they come from the plugin's records when the lane ends
    (`fill_from_records`); until then its steps carry the top-k H and no weights."""
    candidates, weights, entropy = trace.recompute(step)
    step.entropy = entropy
    if trace.config.mixes and not trace.config.switched:
        step.candidate_ids, step.weights = candidates, weights
    return step


def fill_from_records(trace: Trace, records: dict[str, dict[str, list]]) -> bool:
    """A switched lane's H and weights per step, from the plugin's records of what it fed (`moi_records` asked for
    the lane's request id alone). False (and the steps as they were) when the records do not cover the lane."""
    found = list(records.values())
    if len(found) != 1 or len(found[0]["weights"]) < len(trace.steps):
        logger.warning("moi-demo: no records of what lane %s fed (%d found)", trace.request_id, len(found))
        return False
    record, cfg = found[0], trace.config
    for step, ids, weights, entropy in zip(
        trace.steps, record["candidates"], record["weights"], record["entropy"], strict=False
    ):
        step.candidate_ids, step.weights, step.entropy = list(ids), list(weights), float(entropy)
        if cfg.prior != "raw" or cfg.noise > 0:
            step.mixed_prior = prior_from_weights(ids, weights, step.topk_ids, step.token_id, entropy, cfg)
    return True


def apply_output(trace: Trace, completion: Any, done: bool, wide: int = 0) -> None:
    """One streamed (delta) CompletionOutput into its lane's trace: its steps, its text, and at the end its finish
    reason."""
    for step in steps_from_output(completion, len(trace.steps), trace.top_k, wide):
        trace.steps.append(complete_step(trace, step))
    trace.text += completion.text
    if done:
        trace.finish_reason = completion.finish_reason


def inspect_request(trace: Trace, step: int) -> dict[str, Any]:
    """What the worker's `moi_inspect` needs of a lane: every step's fed candidates and weights (a standard step:
    its sampled token, weight 1), padded to one width, the sampled ids, and the step inspected (clamped)."""
    rows = [(s.candidate_ids, s.weights) if s.weights else ([s.token_id], [1.0]) for s in trace.steps]
    width = max(len(ids) for ids, _ in rows)
    return {
        "ids": [list(ids) + [0] * (width - len(ids)) for ids, _ in rows],
        "weights": [list(w) + [0.0] * (width - len(w)) for _, w in rows],
        "sampled": trace.token_ids,
        "step": min(max(step, 0), len(trace.steps) - 1),
    }


def inspect_answer(
    trace: Trace, lane: dict[str, Any], ranks: list[dict[str, Any]], decode: Callable[[list[int]], str], ms: float
) -> dict[str, Any]:
    """A lane's inspection from each rank's answer (under tensor parallelism a rank holds a slice of the
    vocabulary: the NEAREST over all ranks' nearest; the cosines are whole on every rank)."""
    merged = sorted(
        (sim, tid) for rank in ranks for tid, sim in zip(rank["nearest_ids"], rank["nearest_sims"], strict=True)
    )
    at, cos = lane["step"], ranks[0]["cos"]
    return {
        "lane": trace.lane,
        "label": lane_label(trace.config, full=True),
        "step": at,
        "sampled": trace.steps[at].token,
        "cos_at_step": cos[at],
        "cos": cos,
        "nearest": [{"token": decode([tid]), "id": tid, "cos": sim} for sim, tid in reversed(merged[-NEAREST:])],
        "ms": ms,
    }

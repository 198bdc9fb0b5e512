"""The plain forms: one row at a time, over the whole vocabulary where a switch needs it, written from the paper
rather than for speed. The oracle for the batched math (mixing.py) and what the traces and the page read back from
returned log-probs or from what the plugin fed. Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from moi_demo.core.batch_config import BatchConfig
from moi_demo.core.config import GREEDY_EPS, MASK32, MoIConfig, SamplingContext
from moi_demo.core.mixing import (
    GUMBEL_SALT,
    MULTIPLEX_SALT,
    candidates,
    gumbel,
    mix_weights,
    normalized_entropy,
    renormalized_probs,
    uniforms,
)


def reference_prior(
    logits: torch.Tensor, ids: torch.Tensor, cfg: MoIConfig, seed: int, position: int
) -> tuple[torch.Tensor, float]:
    """The switched prior p [K] over `ids` [K] and its H, written plainly over the whole vocabulary from one row's
    raw logits [V] (float64): the oracle for `prior_logits` and `full_entropy` (reference.py decodes with it)."""
    x = logits.to(torch.float64)
    ctx = cfg.context or SamplingContext()
    z = x[ids]
    if cfg.prior == "processed":
        if ctx.temperature < GREEDY_EPS:
            top = int(torch.argmax(z))
            z = torch.full_like(z, float("-inf"))
            z[top] = 0.0
        else:
            probs = torch.softmax(x / ctx.temperature, dim=-1)  # [V] the request's distribution
            order = torch.argsort(probs, descending=True, stable=True)
            sorted_p = probs[order]
            kept = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < ctx.top_p  # top-p: mass above < top_p
            kept[0] = True
            keep = torch.zeros(x.numel(), dtype=torch.bool)
            keep[order[kept]] = True
            z = torch.where(keep[ids], x[ids] / ctx.temperature, torch.tensor(float("-inf"), dtype=torch.float64))
    if cfg.noise > 0:
        z = z + cfg.noise * gumbel(torch.tensor([seed & MASK32]), torch.tensor([position]), ids[None, :])[0]
    p = torch.softmax(z, dim=-1)
    if cfg.entropy == "full":
        h = float(torch.special.entr(torch.softmax(x, dim=-1)).sum() / math.log(x.numel()))
    else:
        h = float(torch.special.entr(p).sum() / math.log(ids.numel())) if ids.numel() > 1 else 0.0
    return p, min(max(h, 0.0), 1.0)


def reference_weights(
    p: torch.Tensor, h: float, ids: torch.Tensor, sampled: int, cfg: MoIConfig, seed: int, position: int
) -> torch.Tensor:
    """A step's weights [K + 1] over (the top-k `ids` [K], then y), written plainly from the paper and its rivals,
    one row: the oracle for the batched `rival_mixture`, `gate_open` and `prior_share`. p [K] is the prior
    (`reference_prior`), h its H.
        moi        w = (H * p + (beta + 1 - H) * onehot(y)) / (beta + 1)
        direct     w = p
        gumbel     w = softmax((log p + G) / tau), G ~ Gumbel(0, 1) per id from the seed
        multiplex  w = counts of `samples` draws from p (the first entry whose running sum passes u * sum p), / samples
    and w = onehot(y) where the gate is shut. y's own column (the last) holds its weight when y is outside the top-k;
    inside it, y's entry in the top-k does."""
    k = ids.numel()
    p = p.to(torch.float64)
    onehot = torch.zeros(k + 1, dtype=torch.float64)
    inside = (ids == sampled).nonzero()
    onehot[int(inside[0]) if inside.numel() else k] = 1.0
    shut = (cfg.gate == "high" and h < cfg.gate_h) or (cfg.gate == "low" and h > cfg.gate_h)
    if cfg.mode == "standard" or shut:
        return onehot
    seed_t, position_t = torch.tensor([seed & MASK32]), torch.tensor([position])
    if cfg.mode == "gumbel":
        g = gumbel(seed_t ^ GUMBEL_SALT, position_t, ids[None, :])[0]
        q = torch.softmax((torch.log(p) + g) / cfg.tau, dim=-1)
    elif cfg.mode == "multiplex":
        counts = [0] * k
        total = float(p.sum())
        for draw in range(cfg.samples):
            u = float(uniforms(seed_t ^ MULTIPLEX_SALT, position_t, torch.tensor([[draw]]))[0, 0]) * total
            running, pick = 0.0, k - 1
            for i in range(k):
                running += float(p[i])
                if running > u:
                    pick = i
                    break
            counts[pick] += 1
        q = torch.tensor(counts, dtype=torch.float64) / cfg.samples
    else:
        q = p
    q = torch.cat([q, torch.zeros(1, dtype=torch.float64)])
    if cfg.mode == "moi":
        beta = max(cfg.beta, 0.0)
        return (h * q + (beta + 1.0 - h) * onehot) / (beta + 1.0)
    return q


def prior_from_weights(
    candidate_ids: Sequence[int],
    weights: Sequence[float],
    topk_ids: Sequence[int],
    sampled_id: int,
    entropy: float,
    config: MoIConfig,
) -> list[float] | None:
    """The prior p over `topk_ids` that a step's weights were mixed from, given its H: the posterior's inverse.
    w_c = a * p_c (+ 1 - a on y), a = H / (beta + 1) for MoI and 1 for direct mixture; None when a ~ 0 or the gate
    was shut (the weights are onehot(y) and hold no trace of p), and for a rival mode (its weights are a draw)."""
    if config.rival:
        return None  # a rival mode's weights are a draw from p, not a share of it
    shut = (config.gate == "high" and entropy < config.gate_h) or (config.gate == "low" and entropy > config.gate_h)
    a = 1.0 if config.mode == "direct" else entropy / (max(config.beta, 0.0) + 1.0)
    if a < 1e-6 or shut:
        return None
    w: dict[int, float] = {}
    for c, x in zip(candidate_ids, weights, strict=True):
        w[c] = w.get(c, 0.0) + x
    return [max(0.0, (w.get(t, 0.0) - (1.0 - a if t == sampled_id else 0.0)) / a) for t in topk_ids]


def step_weights(
    topk_logprobs: Sequence[float], topk_ids: Sequence[int], sampled_id: int, config: MoIConfig
) -> tuple[list[int], list[float], float]:
    """One step's (candidate ids, weights, H) recomputed from returned top-k log-probabilities.

    Log-probabilities differ from raw logits by one constant per row, so softmax over them is p.
    Candidates are returned without padding: the top-k ids, plus y when it is outside them.
    """
    k = len(topk_ids)
    cfg = BatchConfig.from_configs([MoIConfig(config.mode, config.beta, k)])
    ids = torch.tensor([list(topk_ids)], dtype=torch.long)
    p = renormalized_probs(torch.tensor([list(topk_logprobs)], dtype=torch.float64))
    entropy = normalized_entropy(p, cfg.top_k)
    cand, onehot = candidates(ids, torch.tensor([sampled_id]), cfg.top_k)
    w = mix_weights(p, entropy, onehot, cfg.beta, cfg.mode)[0]
    cand_list, w_list = cand[0].tolist(), w.tolist()
    if onehot[0, -1] == 0:  # y is inside the top-k: its own column (the last) carries no weight
        cand_list, w_list = cand_list[:-1], w_list[:-1]
    return cand_list, w_list, float(entropy[0])

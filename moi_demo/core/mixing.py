"""The Mixture of Inputs math (arXiv 2505.14827), batched, pure torch: the only place the batched formula is written
(config.py holds the settings, batch_config.py a batch's as tensors, plain.py the one-row forms the tests and
traces check it against).

At each decode step a standard LLM samples a token y and feeds back its embedding E[y]. MoI feeds back
a mixture of the top-k candidates' embeddings instead. With p the top-k distribution renormalised from
the raw (temperature-1) logits, H its entropy divided by log k, and a concentration beta >= 0:

    w = (H * p + (beta + 1 - H) * onehot(y)) / (beta + 1)        ("moi", the posterior mean)
    w = p                                                        ("direct" mixture)
    w = onehot(y)                                                ("standard": no mixing)
    input = sum_i w_i * embed(candidate_i)

Three of MoI's design choices are per-request switches (defaults: the paper's MoI, exactly):
    entropy "top_k": H = entropy(p) / log k         "full": H = entropy(softmax(raw logits over V)) / log |V|
    prior   "raw":   p = softmax(top-k raw logits)  "processed": p = the request's distribution after its temperature
                     and top-p (vLLM's rule), renormalised over the top-k; greedy: onehot(top-1). The request's
                     penalties, top-k and min-p are not applied (the prior is taken where the raw one is)
    noise   g >= 0:  p = softmax(prior logits + g * G), G ~ Gumbel(0, 1) per (seed, position, token id), drawn by
                     a counter-based hash (`gumbel`): the same noise on every device, batch and replay of a seed
The candidates stay the top-k of the raw logits in every case; a prior entry that top-p or top-k leaves out has p = 0.
Its rivals, as modes (`rival_mixture`), feed a mixture q over the top-k in place of MoI's posterior (no onehot(y)):
    gumbel     q = softmax((log p + G) / tau), G ~ Gumbel(0, 1) per id from the seed (Stochastic Soft Thinking)
    multiplex  q = counts of `samples` draws from p, from the seed, over `samples` (Multiplex Thinking)
and a gate (`gate_open`) mixes only at some steps: "high" where H >= gate_h (SeLaR), "low" where H <= gate_h
(ThinkRouter); a shut step feeds onehot(y), exactly a standard step.

Everything here is batched: one row per request, each row with its own mode, beta and top_k.
Shapes: B rows, V vocabulary, K = max top_k over the batch, C = K + 1 candidates (row b: its top_k[b] ids,
then the sampled id, which carries weight only when it is outside the row's top-k), D hidden size.
No function modifies its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from moi_demo.core.batch_config import BatchConfig, Switches
from moi_demo.core.config import MASK32, MODE_DIRECT, MODE_STANDARD


@dataclass(frozen=True)
class MixStep:
    """One decode step of a batch, everything needed to build the next inputs (and to plot them)."""

    topk_ids: torch.Tensor  # [B, K] long; columns >= top_k[b] are padding (p = 0)
    topk_logits: torch.Tensor  # [B, K] float32; -inf beyond top_k[b]
    p: torch.Tensor  # [B, K] renormalised top-k distribution (the prior)
    entropy: torch.Tensor  # [B] normalised entropy H in [0, 1]
    candidate_ids: torch.Tensor  # [B, C]: columns < top_k[b] the row's top-k ids, column top_k[b] the sampled id
    weights: torch.Tensor  # [B, C] mix weights (the posterior); sum to 1 per row, 0 past column top_k[b]


_FLOAT32_64 = (torch.float32, torch.float64)
_ARANGE: dict[tuple[int, torch.device], torch.Tensor] = {}  # arange(chunk) per device: built once, not per step


def _arange(n: int, device: torch.device) -> torch.Tensor:
    key = (n, device)
    if key not in _ARANGE:
        _ARANGE[key] = torch.arange(n, device=device)
    return _ARANGE[key]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the input already is."""
    return torch.promote_types(t.dtype, torch.float32)


# Top-k over a large vocabulary in two exact stages: the k chunks with the largest maxima hold every one of
# the k largest logits (any other chunk is beaten by k chunk maxima, each an element of its own chunk), so
# one pass of chunk maxima and a top-k over k chunks replace a top-k over the whole row (2.5x faster on a
# CPU at 64 x 49k). Ties between equal logits may resolve to other ids than a plain top-k; values agree.
TOPK_CHUNK = 64


def _topk_two_stage(x: torch.Tensor, k: int, chunk: int = TOPK_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    b, v = x.shape
    n = v // chunk
    body = (x if n * chunk == v else x[:, : n * chunk]).reshape(b, n, chunk)  # [B, n, chunk]
    chunk_ids = torch.topk(body.amax(dim=-1), k, dim=-1).indices  # [B, k] the chunks that hold the top-k
    cols = (chunk_ids.unsqueeze(2) * chunk + _arange(chunk, x.device)).reshape(b, k * chunk)
    if n * chunk < v:  # the tail that fills no whole chunk is always a candidate
        tail = torch.arange(n * chunk, v, device=x.device).expand(b, v - n * chunk)
        cols = torch.cat([cols, tail], dim=-1)
    values, pos = torch.topk(x.gather(1, cols), k, dim=-1)  # [B, k] sorted descending
    return values, cols.gather(1, pos)


def topk_logits(
    logits: torch.Tensor,
    top_k: torch.Tensor,
    k_max: int | None = None,
    uniform_k: bool | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of raw logits [B, V] with a per-row k [B] -> (ids [B, K], logits [B, K], -inf past k).

    `k_max` (= max top_k) and `uniform_k` (every row has k_max) come from the host where known; without
    them they are read from `top_k`, which syncs with the device. `rows` [M]: only these rows of `logits` are
    wanted (`top_k` [M] is theirs); the top-k is taken over every row and [M, K] selected, so that no [M, V] copy of
    the logits is made.
    """
    if k_max is None:
        k_max = int(top_k.max())
    if uniform_k is None:
        uniform_k = bool((top_k == k_max).all())
    x = logits if logits.dtype in _FLOAT32_64 else logits.to(torch.float32)
    if x.shape[-1] // TOPK_CHUNK >= 4 * k_max:
        values, ids = _topk_two_stage(x, k_max)
    else:
        values, ids = torch.topk(x, k_max, dim=-1)  # [B, K] sorted descending
    if rows is not None:
        values, ids = values.index_select(0, rows), ids.index_select(0, rows)  # [M, K]
    if uniform_k:  # the common case: one k for the whole batch, nothing to mask
        return ids, values
    valid = torch.arange(k_max, device=logits.device)[None, :] < top_k[:, None]  # [B, K]
    return ids, values.masked_fill(~valid, float("-inf"))


def renormalized_probs(topk_logits: torch.Tensor) -> torch.Tensor:
    """p = softmax over the top-k logits [B, K] (temperature 1); -inf entries get p = 0."""
    return torch.softmax(topk_logits.to(_compute_dtype(topk_logits)), dim=-1)


def normalized_entropy(p: torch.Tensor, top_k: torch.Tensor, inv_log_k: torch.Tensor | None = None) -> torch.Tensor:
    """H = entropy(p) / log(k), per row [B]; 0 when k = 1. `inv_log_k` (1/log k, 0 for k = 1) may be given."""
    if inv_log_k is None:
        log_k = torch.log(top_k.clamp_min(2).to(p.dtype))
        inv_log_k = torch.where(top_k > 1, 1.0 / log_k, torch.zeros_like(log_k))
    entropy = torch.special.entr(p).sum(dim=-1)  # [B], -sum p log p with 0 log 0 = 0
    return (entropy * inv_log_k.to(entropy.dtype)).clamp_(0.0, 1.0)


def candidates(
    topk_ids: torch.Tensor, sampled: torch.Tensor, top_k: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates [B, C] (C = K + 1) and onehot(y) over them [B, C] float32.

    Row b's candidates are its first top_k[b] ids, then the sampled id y in column top_k[b] (so a row's
    own candidates are the prefix [:top_k[b] + 1], whatever the batch's K). The one-hot lands on y's
    top-k column when y is among the row's top-k, else on column top_k[b].
    """
    if valid is None:
        valid = torch.arange(topk_ids.shape[1], device=topk_ids.device)[None, :] < top_k[:, None]  # [B, K]
    hit = (topk_ids == sampled[:, None]) & valid  # [B, K]
    outside = ~hit.any(dim=-1, keepdim=True)  # [B, 1]
    column = top_k[:, None]  # [B, 1]: where y goes
    candidate_ids = torch.nn.functional.pad(topk_ids, (0, 1))  # [B, C]
    candidate_ids.scatter_(1, column, sampled[:, None].to(topk_ids.dtype))
    onehot = torch.nn.functional.pad(hit.float(), (0, 1))  # [B, C]
    onehot.scatter_(1, column, outside.float())
    return candidate_ids, onehot


# -- the switches (module docstring) --------------------------------------------------------------------------


class PriorExtras(NamedTuple):
    """What a switched step needs beyond the top-k, taken from the full logits before sampling (`prior_extras`):
    the full entropy H_full [B] (normalised), the request's log-partition log Z_T [B] = logsumexp(logits / T), and
    each row's position [B] (its generated-token index: the noise's counter). None where no row needs it."""

    full_entropy: torch.Tensor | None = None
    log_z: torch.Tensor | None = None
    positions: torch.Tensor | None = None


NO_EXTRAS = PriorExtras()  # a step with no switched row


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H_full = entropy(softmax(logits)) / log V per row [B], from logits [B, V] (temperature 1)."""
    logp = torch.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)  # [B, V]
    return (-(logp.exp() * logp).sum(dim=-1) / math.log(logits.shape[-1])).clamp_(0.0, 1.0)


def prior_extras(
    logits: torch.Tensor, switches: Switches | None, positions: torch.Tensor | None, rows: torch.Tensor | None = None
) -> PriorExtras:
    """The extras of a switched step from its full logits [B, V] (each O(B * V): computed only when a row asks);
    NO_EXTRAS for a batch with no switched row. `rows` [M]: the switches are those of these rows of `logits`; the
    full entropy is taken over every row and [M] selected, the tempered log-partition over the [M, V] it needs."""
    if switches is None:
        return NO_EXTRAS
    h_full = None
    if switches.any_full:
        h_full = full_entropy(logits) if rows is None else full_entropy(logits).index_select(0, rows)
    log_z = None
    if switches.any_processed:
        x = logits if rows is None else logits.index_select(0, rows)  # logits / T is an [M, V] temporary anyway
        x = x.to(_compute_dtype(x))
        log_z = torch.logsumexp(x * switches.inv_temp.to(x.dtype)[:, None], dim=-1)  # [M]
    return PriorExtras(h_full, log_z, positions if switches.needs_positions else None)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (x in [0, 2^32), int64 tensor): two multiply-xorshift rounds. Each product stays
    below 2^59, so int64 never overflows on any device."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


GUMBEL_SALT, MULTIPLEX_SALT = 0x6B1E5EED, 0x3A7C0FFE  # the rival modes' draws: streams apart from the noise's


def uniforms(seed: torch.Tensor, position: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """U(0, 1) [B, N] (float64) for integers index [B, N] at each row's position [B] under its seed [B]: a pure
    function of (seed, position, index), so a seeded request draws the same on any device, in any batch, at any
    replay. u = (hash + 1/2) / 2^32."""
    x = _hash32((index.long() + 0x9E3779B9) & MASK32)
    x = _hash32(((x ^ position.long()[:, None]) + 0x7F4A7C15) & MASK32)
    x = _hash32(((x ^ seed.long()[:, None]) + 0x2545F491) & MASK32)
    return (x.to(torch.float64) + 0.5) / 2.0**32


def gumbel(seed: torch.Tensor, position: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise [B, K] for token ids [B, K] (`uniforms` of the ids): G = -log(-log u)."""
    return -torch.log(-torch.log(uniforms(seed, position, ids)))


def prior_logits(ids: torch.Tensor, top_logits: torch.Tensor, switches: Switches, extras: PriorExtras) -> torch.Tensor:
    """The prior's logits [B, K] whose softmax is p, from the top-k of the raw logits (ids, logits [B, K], sorted
    descending, -inf past a row's k). Raw rows: the logits as they are. Processed rows: logits / T, with the
    entries top-p leaves out at -inf (it keeps a token while the mass ranked above it, under the full tempered
    distribution exp(logit / T - log Z_T), is below top_p: vLLM's rule), and only the top-1 where greedy. Noised
    rows: + noise * G."""
    z = top_logits if top_logits.dtype in _FLOAT32_64 else top_logits.to(torch.float32)
    rank = _arange(z.shape[1], z.device)[None, :]  # [1, K]
    if switches.any_processed:
        assert extras.log_z is not None
        zt = z * switches.inv_temp.to(z.dtype)[:, None]  # [B, K]
        q = torch.exp(zt - extras.log_z.to(z.dtype)[:, None])  # [B, K] the request's probabilities
        above = torch.cumsum(q, dim=-1) - q  # mass ranked above each entry
        keep = above < switches.top_p.to(z.dtype)[:, None]
        keep = torch.where(switches.greedy[:, None], rank == 0, keep | (rank == 0))  # the top-1 always stays
        z = torch.where(switches.processed[:, None], zt.masked_fill(~keep, float("-inf")), z)
    if switches.any_noise:
        assert extras.positions is not None
        g = gumbel(switches.seed, extras.positions, ids).to(z.dtype)  # [B, K]
        z = z + switches.noise.to(z.dtype)[:, None] * g  # -inf stays -inf
    return z


def prior_share(
    entropy: torch.Tensor,
    inv_beta1: torch.Tensor,
    direct: torch.Tensor | None = None,
    standard: torch.Tensor | None = None,
) -> torch.Tensor:
    """a [B], the prior's share of the mix, from H [B] and 1 / (beta + 1) [B]: the paper's posterior

        w = (H * p + (beta + 1 - H) * onehot(y)) / (beta + 1) = a * p + (1 - a) * onehot(y),   a = H / (beta + 1)

    the one place the MoI weight is written in batched form (plain.py has the one-row form); a = 1 where `direct`
    (w = p, or a rival mode's mixture), 0 where `standard` (w = onehot(y))."""
    a = entropy * inv_beta1
    if direct is not None:
        a = torch.where(direct, torch.ones_like(a), a)
    if standard is not None:
        a = torch.where(standard, torch.zeros_like(a), a)
    return a


def rival_mixture(p: torch.Tensor, ids: torch.Tensor, sw: Switches, positions: torch.Tensor) -> torch.Tensor:
    """The mixture [B, K] over the top-k that a rival mode feeds in place of p (other rows: p as it is), drawn from
    each row's seed at its position [B]:
        gumbel     softmax((log p + G) / tau), G ~ Gumbel(0, 1) per id (Stochastic Soft Thinking)
        multiplex  counts of `samples` draws from p (inverse CDF of `uniforms`), over `samples` (Multiplex Thinking)
    An entry with p = 0 (past a row's k, or left out by the prior) gets nothing in either."""
    q = p
    if sw.any_gumbel:
        g = gumbel(sw.seed ^ GUMBEL_SALT, positions, ids).to(p.dtype)  # [B, K]
        soft = torch.softmax((torch.log(p) + g) / sw.tau.to(p.dtype)[:, None], dim=-1)
        q = torch.where(sw.gumbel[:, None], soft, q)
    if sw.any_multiplex:
        b, k = p.shape
        draw = _arange(sw.max_samples, p.device)[None, :].expand(b, -1)  # [B, S] draw index
        cdf = torch.cumsum(p.to(torch.float64), dim=-1)  # [B, K]; flat past a row's k
        u = uniforms(sw.seed ^ MULTIPLEX_SALT, positions, draw) * cdf[:, -1:]  # [B, S] below the row's total
        picked = torch.searchsorted(cdf, u, right=True).clamp_max(k - 1)  # [B, S] the first entry with cdf > u
        taken = (draw < sw.samples[:, None]).to(p.dtype)  # [B, S] a row's own number of draws
        counts = torch.zeros_like(p).scatter_add_(1, picked, taken)  # [B, K]
        q = torch.where(sw.multiplex[:, None], counts / sw.samples.clamp_min(1).to(p.dtype)[:, None], q)
    return q


def gate_open(entropy: torch.Tensor, sw: Switches) -> torch.Tensor:
    """[B] bool: the row mixes at this step (no gate; or H >= gate_h where gate "high"; or H <= gate_h where
    "low"). A shut row feeds onehot(y): exactly a standard step."""
    h, t = entropy, sw.gate_h.to(entropy.dtype)
    return ~(sw.gate_high & (h < t)) & ~(sw.gate_low & (h > t))


def mix_weights(
    p: torch.Tensor,
    entropy: torch.Tensor,
    onehot: torch.Tensor,
    beta: torch.Tensor,
    mode: torch.Tensor,
    all_moi: bool = False,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix weights [B, C] = a * p + (1 - a) * onehot(y) (`prior_share`) from the prior p [B, K] (a rival mode's
    mixture in its rows), H [B], onehot(y) [B, C], beta [B] and mode codes [B]: the posterior for moi, p for direct
    and the rivals, onehot(y) for standard and where `gate` [B] (bool, True: open) is shut."""
    dtype = _compute_dtype(p)
    p_c = torch.nn.functional.pad(p.to(dtype), (0, 1))  # [B, C]: no prior mass past a row's k (p = 0 there)
    inv_beta1 = 1.0 / (beta.to(dtype) + 1.0)
    a = (
        prior_share(entropy.to(dtype), inv_beta1)
        if all_moi
        else prior_share(entropy.to(dtype), inv_beta1, mode >= MODE_DIRECT, mode == MODE_STANDARD)
    )
    if gate is not None:
        a = torch.where(gate, a, torch.zeros_like(a))
    a = a[:, None]  # [B, 1]
    return a * p_c + (1.0 - a) * onehot.to(dtype)


def mix_step(
    logits: torch.Tensor, sampled: torch.Tensor, config: BatchConfig, positions: torch.Tensor | None = None
) -> MixStep:
    """The whole step from raw logits [B, V] (temperature 1, before penalties) and sampled ids [B]; `positions`
    [B] (generated-token index) where a row is noised."""
    ids, top_logits = topk_logits(logits, config.top_k, config.k_max, config.uniform_k)
    return mix_from_topk(ids, top_logits, sampled, config, prior_extras(logits, config.switches, positions))


def mix_from_topk(
    ids: torch.Tensor,
    top_logits: torch.Tensor,
    sampled: torch.Tensor,
    config: BatchConfig,
    extras: PriorExtras = NO_EXTRAS,
) -> MixStep:
    """The step from the top-k of the raw logits (ids [B, K], logits [B, K]) and sampled ids [B]: for
    engines whose sampler modifies the logits in place, so the top-k must be taken before sampling. Switched rows
    need the step's `extras` (`prior_extras`, from the full logits)."""
    sw = config.switches
    p = renormalized_probs(top_logits if sw is None else prior_logits(ids, top_logits, sw, extras))
    entropy = normalized_entropy(p, config.top_k, config.inv_log_k)
    if sw is not None and sw.any_full:
        entropy = torch.where(sw.full, extras.full_entropy.to(entropy.dtype), entropy)
    candidate_ids, onehot = candidates(ids, sampled, config.top_k, config.valid)
    q, gate = p, None
    if sw is not None:
        q = rival_mixture(p, ids, sw, extras.positions) if sw.any_gumbel or sw.any_multiplex else p
        gate = gate_open(entropy, sw) if sw.any_gate else None
    weights = mix_weights(q, entropy, onehot, config.beta, config.mode, config.all_moi, gate)
    return MixStep(ids, top_logits, p, entropy, candidate_ids, weights)


class Fed(NamedTuple):
    """What a serving step feeds: candidates [B, C], weights [B, C], and the H [B] they were mixed with."""

    candidate_ids: torch.Tensor
    weights: torch.Tensor
    entropy: torch.Tensor


def fed_weights(
    ids: torch.Tensor,
    top_logits: torch.Tensor,
    sampled: torch.Tensor,
    config: BatchConfig,
    extras: PriorExtras = NO_EXTRAS,
) -> Fed:
    """The weights an engine feeds, in the fewest ops (`sampled` [B], or an engine's [B, 1]): candidates [B, C]
    (row b: its top-k ids, then y in
    column top_k[b]) and weights [B, C] = (a*p, then 1 - a in y's column), a = H / (beta + 1) for MoI and
    1 for direct mixture. The same mixture as `mix_weights` (the posterior): when y is among the top-k its
    two columns add up to a*p_y + 1 - a = (H*p_y + beta + 1 - H) / (beta + 1). No top-k membership test,
    no one-hot: what a serving step can afford. Switched rows (config.switches) need the step's `extras`."""
    x = top_logits if top_logits.dtype in _FLOAT32_64 else top_logits.to(torch.float32)
    sw = config.switches
    if sw is not None:
        x = prior_logits(ids, x, sw, extras)
    p = torch.softmax(x, dim=-1)  # [B, K]
    f32 = p.dtype == torch.float32  # the scales in p's dtype: precomputed for float32 (every engine step)
    h = torch.special.entr(p).sum(dim=-1) * (config.inv_log_k32 if f32 else config.inv_log_k.to(p.dtype))  # [B] H
    if sw is not None and sw.any_full:
        h = torch.where(sw.full, extras.full_entropy.to(h.dtype), h)
    inv_beta1 = config.inv_beta1_32 if f32 else config.inv_beta1.to(p.dtype)
    a = prior_share(h, inv_beta1, None if config.all_moi else config.direct)  # [B] the prior's share
    if sw is not None:
        if sw.any_gumbel or sw.any_multiplex:
            p = rival_mixture(p, ids, sw, extras.positions)  # their rows' a is 1 (config.direct)
        if sw.any_gate:
            a = torch.where(gate_open(h, sw), a, torch.zeros_like(a))
    y = sampled.unsqueeze(1) if sampled.dim() == 1 else sampled  # [B, 1] (an engine's [B, 1] sample as it is)
    candidate_ids = torch.cat([ids, y], dim=-1)  # [B, K + 1], ids' dtype (torch.cat promotes an int32 sample)
    a1 = a.unsqueeze(1)  # [B, 1]
    weights = torch.cat([p * a1, 1.0 - a1], dim=-1)  # [B, K + 1]
    if not config.uniform_k:  # y goes to column top_k[b]; the columns after it carry no weight
        column = config.top_k[:, None]
        y_weight = weights[:, -1:].clone()
        candidate_ids = candidate_ids.scatter(1, column, y.to(ids.dtype))
        weights = weights.masked_fill(~torch.nn.functional.pad(config.valid, (0, 1)), 0.0).scatter(1, column, y_weight)
    return Fed(candidate_ids, weights, h)


Reduce = Callable[[torch.Tensor], torch.Tensor]  # an all-reduce (sum) across ranks of a [B, D] tensor, in place


def fed_step(
    ids: torch.Tensor,
    top_logits: torch.Tensor,
    sampled: torch.Tensor,
    config: BatchConfig,
    embed: Callable[[torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    extras: PriorExtras = NO_EXTRAS,
    reduce: Reduce | None = None,
) -> Fed:
    """A serving step in the fewest ops: `fed_weights`, then the mixed inputs sum_i w_i * embed(candidate_i) written
    into `out` [B, D] (float32 sum, cast to out's dtype by the copy). Returns what `fed_weights` does.
    The same values as `mix_embeddings(*fed_weights(...)[:2])`: tested bit for bit.

    Under tensor parallelism `embed` gives this rank's shard of each embedding (zero for tokens another rank holds,
    before the all-reduce) and `reduce` sums the mixed [B, D] across ranks: the sum is linear, so the mixture of the
    shards summed is the mixture of the embeddings, and the all-reduce carries [B, D] instead of [B, C, D]."""
    fed = fed_weights(ids, top_logits, sampled, config, extras)
    out.copy_(_mixed(fed.weights, fed.candidate_ids, embed, reduce)[0])
    return fed


def _mixed(
    weights: torch.Tensor,
    candidate_ids: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    reduce: Reduce | None,
) -> tuple[torch.Tensor, torch.dtype]:
    """(sum_i w_i * embed(candidate_i) [B, D] in the promoted dtype (float32 at least), summed across ranks by
    `reduce` before any cast; the embedding's dtype)."""
    emb = embed(candidate_ids)  # [B, C, D]
    dtype = torch.promote_types(_compute_dtype(weights), _compute_dtype(emb))
    w = weights if weights.dtype == dtype else weights.to(dtype)
    e = emb if emb.dtype == dtype else emb.to(dtype)
    mixed = torch.einsum("bc,bcd->bd", w, e)  # [B, D] (einsum's summation order: what the oracle sums)
    return (mixed if reduce is None else reduce(mixed)), emb.dtype


def mix_embeddings(
    weights: torch.Tensor,
    candidate_ids: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    out_dtype: torch.dtype | None = None,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """sum_i w_i * embed(candidate_i) -> [B, D].

    `embed` is the model's own input-embedding function (so Gemma's sqrt(hidden) scale is included);
    the sum is taken in float32 and cast to `out_dtype` (default: the embedding's dtype). `reduce`: as in
    `fed_step` (a rank's shards, summed across ranks after the mix).
    """
    mixed, emb_dtype = _mixed(weights, candidate_ids, embed, reduce)
    return mixed.to(out_dtype or emb_dtype)

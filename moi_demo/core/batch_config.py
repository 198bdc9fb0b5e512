"""A batch's MoI settings as device tensors, built on batch changes only: `BatchConfig` (mode, beta, top-k per row and
what every step derives from them) and `Switches` (the per-request design choices of config.py, per row). Pure
torch; the math that reads them is in mixing.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moi_demo.core.config import GREEDY_EPS, MASK32, MODE_CODES, MODE_DIRECT, MoIConfig, SamplingContext
from moi_demo.core.transfer import columns_to_device


@dataclass(frozen=True)
class BatchConfig:
    """Per-row settings of the rows that mix in one step: mode codes [B] long, beta [B] float32, top_k [B]
    long, and what every step derives from them: inv_log_k [B] (1/log k, 0 when k = 1) and valid [B, K]
    (column < top_k). `k_max`, `uniform_k` and `all_moi` are host-side facts (never read from a device
    tensor: a serving engine must not sync with the device to learn them)."""

    mode: torch.Tensor
    beta: torch.Tensor
    top_k: torch.Tensor
    k_max: int
    uniform_k: bool
    all_moi: bool
    inv_log_k: torch.Tensor
    valid: torch.Tensor
    inv_beta1: torch.Tensor  # [B] 1 / (beta + 1)
    direct: torch.Tensor  # [B] bool: w has no onehot(y) term (direct mixture and the rival modes)
    inv_log_k32: torch.Tensor  # [B] inv_log_k in float32, and inv_beta1: cast once per batch, not per step
    inv_beta1_32: torch.Tensor
    switches: Switches | None = None  # None: every row is the paper's MoI (the default path, nothing more to do)

    @classmethod
    def from_tensors(
        cls,
        mode: torch.Tensor,
        beta: torch.Tensor,
        top_k: torch.Tensor,
        k_max: int,
        uniform_k: bool,
        all_moi: bool,
        switches: Switches | None = None,
    ) -> BatchConfig:
        """From device tensors and the host-side facts about them (device ops only: no sync)."""
        log_k = torch.log(top_k.clamp_min(2).to(torch.float64))  # exact enough for float64 callers too
        inv_log_k = torch.where(top_k > 1, 1.0 / log_k, torch.zeros_like(log_k))
        valid = torch.arange(k_max, device=top_k.device)[None, :] < top_k[:, None]  # [B, K]
        inv_beta1 = 1.0 / (beta.to(torch.float64) + 1.0)  # exact enough for float64 callers too
        return cls(
            mode,
            beta,
            top_k,
            k_max,
            uniform_k,
            all_moi,
            inv_log_k,
            valid,
            inv_beta1,
            mode >= MODE_DIRECT,
            inv_log_k.to(torch.float32),
            inv_beta1.to(torch.float32),
            switches,
        )

    @classmethod
    def from_configs(
        cls, configs: Sequence[MoIConfig], device: torch.device | str = "cpu", seeds: Sequence[int] | None = None
    ) -> BatchConfig:
        """`seeds`: each row's noise seed where its context has none (an engine draws them per request)."""
        ks = [c.top_k for c in configs]
        mode, beta, top_k = columns_to_device(
            [[MODE_CODES[c.mode] for c in configs], [max(c.beta, 0.0) for c in configs], ks],
            (torch.long, torch.float32, torch.long),
            device,
        )
        return cls.from_tensors(
            mode=mode,
            beta=beta,
            top_k=top_k,
            k_max=max(ks),
            uniform_k=len(set(ks)) == 1,
            all_moi=all(c.mode == "moi" for c in configs),
            switches=Switches.from_configs(configs, device, seeds),
        )


@dataclass(frozen=True)
class Switches:
    """The switched rows' settings, device tensors [B] (mixing.py's docstring): full entropy (bool), processed prior
    (bool), greedy (bool), inv_temp (1 / temperature; 1 where greedy), top_p, noise (Gumbel scale), seed (int64,
    < 2^32); the rival modes gumbel and multiplex (bool), tau, samples (long); the gate, open where H >= gate_h
    (gate_high) or H <= gate_h (gate_low). `any_*` and `max_samples` are host-side facts: what a step computes."""

    full: torch.Tensor
    processed: torch.Tensor
    greedy: torch.Tensor
    inv_temp: torch.Tensor
    top_p: torch.Tensor
    noise: torch.Tensor
    seed: torch.Tensor
    gumbel: torch.Tensor
    multiplex: torch.Tensor
    tau: torch.Tensor
    samples: torch.Tensor
    gate_high: torch.Tensor
    gate_low: torch.Tensor
    gate_h: torch.Tensor
    any_full: bool
    any_processed: bool
    any_noise: bool
    any_gumbel: bool = False
    any_multiplex: bool = False
    max_samples: int = 0
    any_gate: bool = False

    @property
    def needs_positions(self) -> bool:
        """A row draws from its seed at each position (noise, gumbel, multiplex)."""
        return self.any_noise or self.any_gumbel or self.any_multiplex

    @classmethod
    def from_configs(
        cls, configs: Sequence[MoIConfig], device: torch.device | str = "cpu", seeds: Sequence[int] | None = None
    ) -> Switches | None:
        """None when no row is switched (the default path)."""
        if not any(c.switched for c in configs):
            return None
        ctx = [c.context or SamplingContext() for c in configs]
        seeds = seeds or [0] * len(configs)
        greedy = [x.temperature < GREEDY_EPS for x in ctx]
        full, processed = [c.entropy == "full" for c in configs], [c.prior == "processed" for c in configs]
        gumbel, multiplex = [c.mode == "gumbel" for c in configs], [c.mode == "multiplex" for c in configs]
        columns = [  # one packed copy on a batch change (core/transfer.py: a pageable copy would sync)
            full,
            processed,
            greedy,
            [1.0 if g else 1.0 / x.temperature for x, g in zip(ctx, greedy, strict=True)],  # inv_temp
            [x.top_p for x in ctx],
            [c.noise for c in configs],
            [(x.seed if x.seed is not None else s) & MASK32 for x, s in zip(ctx, seeds, strict=True)],  # seed
            gumbel,
            multiplex,
            [c.tau for c in configs],
            [c.samples if m else 0 for c, m in zip(configs, multiplex, strict=True)],
            [c.gate == "high" for c in configs],
            [c.gate == "low" for c in configs],
            [c.gate_h for c in configs],
        ]
        b, f, i = torch.bool, torch.float32, torch.long
        tensors = columns_to_device(columns, (b, b, b, f, f, f, i, b, b, f, i, b, b, f), device)
        return cls(
            *tensors,
            any_full=any(full),
            any_processed=any(processed),
            any_noise=any(c.noise > 0 for c in configs),
            any_gumbel=any(gumbel),
            any_multiplex=any(multiplex),
            max_samples=max((c.samples for c, m in zip(configs, multiplex, strict=True) if m), default=0),
            any_gate=any(c.gate != "none" for c in configs),
        )

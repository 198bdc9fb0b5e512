"""Mixture of Inputs decoding in plain transformers: the oracle for the vLLM path, and a fallback.

Step by step with `inputs_embeds` and a KV cache: the prompt goes in as token embeddings, then each
generated step feeds back either the sampled token's embedding (standard) or the MoI mixture of the
top-k candidates' embeddings (mixing.py), through the model's own input-embedding function.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from moi_demo.core import mixing
from moi_demo.core.batch_config import BatchConfig
from moi_demo.core.config import MoIConfig, SamplingContext
from moi_demo.core.plain import reference_prior, reference_weights
from moi_demo.core.trace import SamplingSettings, Step, Trace

logger = logging.getLogger(__name__)


def sample_token(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> int:
    """One token from raw logits [V]: greedy, or temperature then nucleus (top-p) sampling."""
    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)  # [V]
    if settings.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) > settings.top_p  # keeps at least one
        probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


class ReferenceDecoder:
    """A transformers model decoding one request at a time, standard or MoI."""

    def __init__(self, model_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.embed = self.model.get_input_embeddings()  # the model's own (Gemma: scaled) embedding
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos + [self.tokenizer.eos_token_id] if e is not None}

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    def prompt_ids(self, prompt: str, chat: bool = True) -> list[int]:
        if chat and self.tokenizer.chat_template:
            return list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            )
        return self.tokenizer(prompt)["input_ids"]

    @torch.inference_mode()
    def generate(
        self,
        prompt: str | list[int],
        moi: MoIConfig,
        settings: SamplingSettings = SamplingSettings(),
        chat: bool = True,
        lane: str | None = None,
        forced: list[int] | None = None,
        wide: int = 0,
    ) -> Trace:
        """Decode one request. `forced` replays given tokens instead of sampling (teacher forcing), to
        check another engine's sampled run step by step: its top-k and weights must match ours. A switched config
        (moi_entropy, moi_prior, moi_noise, a gate, a rival mode) takes its prior from `reference_prior`, written
        over the whole vocabulary, and its weights from `reference_weights`, with the settings' temperature, top-p and
        seed (0 where None) as the request's. `wide`: each step also keeps its top-`wide` log-probs (`Step.ranked`,
        as the engine's comparison does)."""
        moi.check_vocab(self.vocab_size)
        if moi.switched:
            moi = dataclasses.replace(
                moi,
                context=SamplingContext(
                    settings.temperature, settings.top_p, settings.seed if settings.seed is not None else 0
                ),
            )
        ids = self.prompt_ids(prompt, chat) if isinstance(prompt, str) else list(prompt)
        device = self.model.device
        cfg = BatchConfig.from_configs([moi], device=device)
        generator = None
        if settings.seed is not None:
            generator = torch.Generator(device=device).manual_seed(settings.seed)
        lane = lane or ("standard" if moi.mode == "standard" else "moi")
        trace = Trace.start(
            lane, moi, settings, prompt if isinstance(prompt, str) else "", self.model_path, "reference"
        )
        cache = DynamicCache(config=self.model.config)
        inputs = self.embed(torch.tensor([ids], device=device))  # [1, T, D]
        out_ids: list[int] = []
        for index in range(settings.max_tokens if forced is None else len(forced)):
            out = self.model(inputs_embeds=inputs, past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :].float()  # [1, V] raw, temperature 1
            token = sample_token(logits[0], settings, generator) if forced is None else forced[index]
            step = (
                self._switched_step(logits, token, moi, cfg, index)
                if moi.switched
                else mixing.mix_step(logits, torch.tensor([token], device=device), cfg)
            )
            logprobs = torch.log_softmax(logits, dim=-1)[0]  # [V]
            k = moi.top_k
            record = Step(
                index=index,
                token_id=token,
                token="",
                logprob=float(logprobs[token]),
                topk_ids=step.topk_ids[0, :k].tolist(),
                topk_logprobs=logprobs[step.topk_ids[0, :k]].tolist(),
                entropy=float(step.entropy[0]),
                topk_tokens=[self.tokenizer.decode([t]) for t in step.topk_ids[0, :k].tolist()],
            )
            if wide:
                top = torch.topk(logprobs, wide)
                record.ranked = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            if moi.mixes:
                keep = slice(None) if token not in record.topk_ids else slice(0, k)
                record.candidate_ids = step.candidate_ids[0, keep].tolist()
                record.weights = step.weights[0, keep].tolist()
                if moi.prior != "raw" or moi.noise > 0:
                    record.mixed_prior = step.p[0, :k].tolist()
            out_ids.append(token)
            record.token = self.tokenizer.decode([token])
            trace.steps.append(record)
            if token in self.eos_ids and forced is None:
                trace.finish_reason = "stop"
                break
            if moi.mixes:
                inputs = mixing.mix_embeddings(step.weights, step.candidate_ids, self.embed)[:, None, :]
            else:
                inputs = self.embed(torch.tensor([[token]], device=device))  # [1, 1, D]
        else:
            trace.finish_reason = "length"
        trace.text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
        return trace

    @staticmethod
    def _switched_step(
        logits: torch.Tensor, token: int, moi: MoIConfig, cfg: BatchConfig, index: int
    ) -> mixing.MixStep:
        """A switched step: the top-k candidates as always, p and H from reference_prior, then the weights of
        reference_weights (the plain forms of the gate and the rival modes)."""
        ids, top = mixing.topk_logits(logits, cfg.top_k, cfg.k_max, cfg.uniform_k)  # [1, K]
        p, h = reference_prior(logits[0], ids[0], moi, moi.context.seed, index)
        entropy = torch.tensor([h], dtype=torch.float64, device=logits.device)
        cand, _ = mixing.candidates(ids, torch.tensor([token], device=logits.device), cfg.top_k)
        weights = reference_weights(p.cpu(), h, ids[0].cpu(), token, moi, moi.context.seed, index)
        return mixing.MixStep(ids, top, p[None], entropy, cand, weights[None].to(logits.device))

    def generate_pair(
        self, prompt: str, moi: MoIConfig, settings: SamplingSettings = SamplingSettings()
    ) -> tuple[Trace, Trace]:
        """The standard and the MoI lane on the same prompt, chat template and seed."""
        standard = self.generate(prompt, MoIConfig("standard", moi.beta, moi.top_k), settings, lane="standard")
        return standard, self.generate(prompt, moi, settings, lane="moi")

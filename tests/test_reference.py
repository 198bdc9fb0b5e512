"""The plain-transformers decoder (the oracle) on the embedded default model."""

from __future__ import annotations

import pytest
import torch

from moi_demo.core.config import MoIConfig
from moi_demo.evaluation.reference import ReferenceDecoder, SamplingSettings

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def decoder(default_model) -> ReferenceDecoder:
    return ReferenceDecoder(default_model)


@pytest.fixture(scope="module")
def standard(decoder):
    return decoder.generate(PROMPT, MoIConfig("standard"), SamplingSettings(max_tokens=24))


def test_greedy_standard_equals_model_generate(decoder, standard):
    ids = decoder.prompt_ids(PROMPT)
    out = decoder.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    assert standard.token_ids == out[0, len(ids) :].tolist()
    assert standard.text.startswith("The capital of France is Paris")
    assert standard.finish_reason == "stop" and standard.token_ids[-1] == 2  # <|im_end|>


def test_chat_template_is_applied(decoder):
    text = decoder.tokenizer.decode(decoder.prompt_ids(PROMPT))
    assert text.endswith(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")


def test_huge_beta_equals_standard(decoder, standard):
    moi = decoder.generate(PROMPT, MoIConfig("moi", 1e9, 20), SamplingSettings(max_tokens=24))
    assert moi.token_ids == standard.token_ids
    assert all(s.weights is not None and s.sampled_weight > 1 - 1e-6 for s in moi.steps)


@pytest.mark.parametrize("cfg", [MoIConfig("moi", 0.0, 20), MoIConfig("direct", 1.0, 20)])
def test_beta_zero_and_direct_differ_from_standard(decoder, standard, cfg):
    mixed = decoder.generate(PROMPT, cfg, SamplingSettings(max_tokens=24))
    assert mixed.token_ids != standard.token_ids
    # the first token comes from the prompt alone: identical in every mode
    assert mixed.token_ids[0] == standard.token_ids[0]


def test_trace_steps_hold_the_weights_that_were_used(decoder):
    moi = decoder.generate(PROMPT, MoIConfig("moi", 1.0, 5), SamplingSettings(max_tokens=8))
    for step in moi.steps:
        assert len(step.topk_ids) == 5 and step.topk_logprobs == sorted(step.topk_logprobs, reverse=True)
        cand, w, h = moi.recompute(step)
        assert cand == step.candidate_ids
        assert w == pytest.approx(step.weights, abs=1e-5)
        assert h == pytest.approx(step.entropy, abs=1e-5)
        assert sum(step.weights) == pytest.approx(1.0, abs=1e-5)


def test_sampled_runs_are_reproducible_by_seed(decoder):
    s = SamplingSettings(temperature=1.0, top_p=0.9, max_tokens=16, seed=7)
    cfg = MoIConfig("moi", 1.0, 20)
    a = decoder.generate("Write a poem about the sea.", cfg, s)
    b = decoder.generate("Write a poem about the sea.", cfg, s)
    c = decoder.generate("Write a poem about the sea.", cfg, SamplingSettings(1.0, 0.9, 16, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_top_k_larger_than_vocab_is_refused(decoder):
    from moi_demo.core.inputs import InputError

    with pytest.raises(InputError, match="top_k: must be from 1 to the vocabulary size 49152"):
        decoder.generate(PROMPT, MoIConfig("moi", 1.0, 50000))


def test_cli_generate_reference(default_model, tmp_path, capsys):
    from moi_demo.cli import main
    from moi_demo.core.trace import load_traces

    out = tmp_path / "t.json"
    assert (
        main(
            [
                "generate",
                PROMPT,
                "--mode",
                "moi",
                "--beta",
                "1.0",
                "--engine",
                "reference",
                "--max-tokens",
                "12",
                "--steps",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "=== Standard" in printed and "=== Mixture of Inputs (beta = 1), top-k = " in printed
    assert "Paris" in printed and "top-3 (weight)" in printed
    standard, moi = load_traces(out)
    assert standard.lane == "standard" and moi.lane == "moi" and moi.beta == 1.0
    assert moi.steps[0].weights is not None and standard.steps[0].weights is None


def test_cli_rejects_bad_beta(capsys):
    from moi_demo.cli import main

    assert main(["generate", "hi", "--beta", "-1", "--engine", "reference"]) == 2
    assert "--beta: must be a finite number >= 0" in capsys.readouterr().err

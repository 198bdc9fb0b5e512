"""core/config.py: a request's MoI settings and their one wire format (SamplingParams.extra_args, vllm_xargs)."""

from __future__ import annotations

import dataclasses

import pytest

from moi_demo.core.config import EXTRA_ARGS_KEYS, KEY_MODE, KEY_RECORD, MoIConfig, SamplingContext

EVERY_KEY = MoIConfig("direct", 2.5, 7, entropy="full", prior="processed", noise=0.3, keep_record=True)


@pytest.mark.parametrize(
    "cfg",
    [
        MoIConfig(),
        MoIConfig("moi", 0.0, 1),
        MoIConfig("direct", 1.0, 50),
        EVERY_KEY,
        MoIConfig("moi", 1e6, 20, noise=1.5, context=SamplingContext(0.7, 0.9, 3)),
    ],
    ids=["paper", "beta0-k1", "direct", "every-key", "noised"],
)
def test_extra_args_round_trip_to_an_equal_config(cfg):
    back = MoIConfig.from_extra_args(cfg.extra_args())
    assert back == cfg and back.keep_record == cfg.keep_record


def test_extra_args_carry_every_key_the_plugin_accepts():
    """One config that sets everything away from its default writes every key the plugin reads (EXTRA_ARGS_KEYS and
    moi_record), each with its value, and nothing else."""
    args = EVERY_KEY.extra_args()
    assert set(args) == {*EXTRA_ARGS_KEYS, KEY_RECORD}
    assert args == {
        "moi_mode": "direct",
        "moi_beta": 2.5,
        "moi_top_k": 7,
        "moi_entropy": "full",
        "moi_prior": "processed",
        "moi_noise": 0.3,
        "moi_record": True,
    }


def test_default_switches_are_left_out_and_a_standard_config_says_standard():
    assert MoIConfig("moi", 1.0, 20).extra_args() == {"moi_mode": "moi", "moi_beta": 1.0, "moi_top_k": 20}
    standard = MoIConfig("standard").extra_args()
    assert standard == {KEY_MODE: "standard"}  # never MIXINPUTS_BETA's default, which a request without keys gets
    default = MoIConfig("moi", 0.5, 20)
    assert MoIConfig.from_extra_args(standard, default).mixes is False
    assert MoIConfig.from_extra_args({}, default) == default


def test_the_wire_format_accepts_what_json_clients_send():
    """vllm_xargs from a JSON client: numbers as strings, integral floats for top-k; the same config."""
    wire = {k: str(v) if k == "moi_beta" else v for k, v in EVERY_KEY.extra_args().items()}
    wire["moi_top_k"] = 7.0
    assert MoIConfig.from_extra_args(wire) == dataclasses.replace(EVERY_KEY)

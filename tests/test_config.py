"""core/config.py: a request's MoI settings and their one wire format (SamplingParams.extra_args, vllm_xargs)."""

from __future__ import annotations

import dataclasses

import pytest

from moi_demo.core.config import EXTRA_ARGS_KEYS, KEY_MODE, KEY_RECORD, MoIConfig, SamplingContext

EVERY_KEY = MoIConfig(
    "gumbel", 2.5, 7, entropy="full", prior="processed", noise=0.3, gate="high", gate_h=0.25, tau=0.7, keep_record=True
)
MULTIPLEX = MoIConfig("multiplex", 1.0, 5, gate="low", gate_h=0.8, samples=4)  # the one key EVERY_KEY cannot set


@pytest.mark.parametrize(
    "cfg",
    [
        MoIConfig(),
        MoIConfig("moi", 0.0, 1),
        MoIConfig("direct", 1.0, 50),
        EVERY_KEY,
        MULTIPLEX,
        MoIConfig("moi", 1e6, 20, noise=1.5, context=SamplingContext(0.7, 0.9, 3)),
    ],
    ids=["paper", "beta0-k1", "direct", "every-key", "multiplex", "noised"],
)
def test_extra_args_round_trip_to_an_equal_config(cfg):
    back = MoIConfig.from_extra_args(cfg.extra_args())
    assert back == cfg and back.keep_record == cfg.keep_record


def test_extra_args_carry_every_key_the_plugin_accepts():
    """Two configs that set everything away from its default (a mode reads tau or samples, not both) write every
    key the plugin reads (EXTRA_ARGS_KEYS and moi_record), each with its value, and nothing else."""
    args = EVERY_KEY.extra_args()
    assert set(args) | set(MULTIPLEX.extra_args()) == {*EXTRA_ARGS_KEYS, KEY_RECORD}
    assert args == {
        "moi_mode": "gumbel",
        "moi_beta": 2.5,
        "moi_top_k": 7,
        "moi_entropy": "full",
        "moi_prior": "processed",
        "moi_noise": 0.3,
        "moi_gate": "high",
        "moi_gate_h": 0.25,
        "moi_tau": 0.7,
        "moi_record": True,
    }
    assert MULTIPLEX.extra_args()["moi_samples"] == 4


def test_a_setting_its_mode_does_not_read_keeps_its_default():
    """tau outside gumbel, samples outside multiplex, gate_h without a gate: configs that decode alike are equal,
    and the wire carries none of them."""
    assert MoIConfig("moi", tau=0.9, samples=7, gate_h=0.1) == MoIConfig("moi")
    assert MoIConfig("moi", tau=0.9).extra_args() == MoIConfig("moi").extra_args()
    assert MoIConfig("gumbel", tau=0.9) != MoIConfig("gumbel")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"moi_gate": "middle"}, "moi_gate: must be one of none, high, low; got 'middle'"),
        ({"moi_gate": "high", "moi_gate_h": 1.5}, "moi_gate_h: must be a number from 0 to 1; got 1.5"),
        ({"moi_mode": "gumbel", "moi_tau": 0}, "moi_tau: must be a number in (0, 100]; got 0"),
        ({"moi_mode": "multiplex", "moi_samples": 2.5}, "moi_samples: must be an integer from 1 to 64; got 2.5"),
        ({"moi_mode": "multiplex", "moi_samples": 0}, "moi_samples: must be an integer from 1 to 64; got 0"),
        ({"moi_mode": "soft"}, "moi_mode: must be one of standard, moi, direct, gumbel, multiplex; got 'soft'"),
    ],
)
def test_new_keys_are_checked_and_named(args, message):
    from moi_demo.core.inputs import InputError

    with pytest.raises(InputError) as e:
        MoIConfig.from_extra_args(args)
    assert str(e.value) == message


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


def test_forcing_rides_the_wire_and_is_checked():
    cfg = MoIConfig("moi", 1.0, 5, force=[3, 1, 4])
    assert cfg.force == (3, 1, 4) and cfg.extra_args()["moi_force"] == [3, 1, 4]
    back = MoIConfig.from_extra_args(cfg.extra_args())
    assert back == cfg and back.force == (3, 1, 4)
    assert cfg == MoIConfig("moi", 1.0, 5)  # an instrument, not a setting: lanes compare equal
    from moi_demo.core.inputs import InputError

    with pytest.raises(InputError, match="moi_force: must be a list of token ids"):
        MoIConfig.from_extra_args({"moi_mode": "moi", "moi_force": [1, -2]})
    with pytest.raises(InputError, match="moi_force: forces the tokens of a mixing lane"):
        MoIConfig.from_extra_args({"moi_mode": "standard", "moi_force": [1]})

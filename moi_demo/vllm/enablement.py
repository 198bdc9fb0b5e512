"""When MoI applies, read by the plugin's front end (plugin.py) and its worker hooks (hooks.py) alike: the switch
that enables MoI for an engine, MIXINPUTS_BETA, a request's MoI config, the environment flags of the tests and the
doctor, and how the plugin marks what it wrapped. No vLLM import.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from moi_demo.core.config import MoIConfig
from moi_demo.core.inputs import InputError

ENV_BETA = "MIXINPUTS_BETA"
ENV_RECORD = "MOI_DEMO_RECORD"  # "1": keep every applied (candidates, weights) for moi_stats(records=True)
ENV_HOST_READS = "MOI_DEMO_HOST_READS"  # "1": count host reads of tensors in the hooks' own code (tests, doctor)
PATCHED = "_moi_demo_patched"  # set on what the plugin wrapped (once per process)
UPDATES = "_moi_updates"  # on BatchUpdateBuilder, only where MoI is enabled: the BatchUpdates not yet applied


SWITCH = "moi"  # the key in additional_config that enables MoI for one engine
HOW_TO_ENABLE = (
    'start the engine with additional_config={"moi": true} (vllm serve: --additional-config '
    "'{\"moi\": true}') or set MIXINPUTS_BETA"
)


def enable_kwargs() -> dict[str, Any]:
    """Engine kwargs that enable MoI for one engine (a fresh dict: vLLM may add keys to additional_config)."""
    return {"additional_config": {SWITCH: True}}


@functools.cache
def env_default() -> MoIConfig | None:
    """The process-wide default from MIXINPUTS_BETA (None when unset)."""
    return MoIConfig.from_env_beta(os.environ.get(ENV_BETA))


def additional_config(value: Any) -> Any:
    """vLLM's additional_config as a dict; a JSON string of one (as a caller of `LLM(...)` may pass it) is parsed."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError("additional_config", f"must be a JSON object; got {value!r} ({e})") from None
    return value


def enabled(config: Any) -> bool:
    """Whether MoI is enabled for an engine with this additional_config: its "moi" key where given (it must be
    true or false), else MIXINPUTS_BETA set in the environment."""
    cfg = additional_config(config)
    if isinstance(cfg, dict) and SWITCH in cfg:
        value = cfg[SWITCH]
        if not isinstance(value, bool):
            raise InputError("additional_config.moi", f"must be true or false; got {value!r}")
        return value
    return env_default() is not None


def request_config(extra_args: dict[str, Any] | None) -> MoIConfig | None:
    """The MoI config of a request, or None when it is left alone (standard)."""
    cfg = MoIConfig.from_extra_args(extra_args, env_default())
    return cfg if cfg is not None and cfg.mixes else None


def wrap_once(owner: Any, name: str, wrap: Any) -> None:
    """Replace owner.name (a class's method or a module's function) by wrap(it), unless already wrapped."""
    current = getattr(owner, name)
    if not getattr(current, PATCHED, False):
        wrapped = wrap(current)
        setattr(wrapped, PATCHED, True)
        setattr(owner, name, wrapped)

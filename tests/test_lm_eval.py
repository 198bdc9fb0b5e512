"""lm-evaluation-harness on the plugin: its `vllm` backend (the `lm_eval` command, as researchers run it) on the
tiny model with a local, offline task (tests/data/lm_eval). Installed but not asked, the plugin leaves every
output identical to stock vLLM; MIXINPUTS_BETA, or `extra_args` in a task's generation_kwargs, changes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vllm_util import KV_BYTES, PLUGINS_WITHOUT_MOI, lm_eval_samples

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.engine
TASKS = "moi_sums,moi_sums_moi,moi_sums_direct"


def run_lm_eval(model: str, tasks: str, out: Path, env: dict[str, str], moi: bool = False) -> dict[str, list[str]]:
    """`lm_eval --model vllm` on `model` (greedy, as the tasks ask): each task's outputs in document order. `moi`:
    MoI enabled for lm-eval's engine as the README says: model_args as JSON, with additional_config {"moi": true}
    (lm-eval reads model_args that hold a brace as JSON)."""
    from moi_demo.serving.settings import engine_kwargs

    engine = engine_kwargs(
        model, moi=moi, cpu=True, kv_cache_memory_bytes=KV_BYTES, enforce_eager=True, max_model_len=512
    )
    engine["pretrained"] = engine.pop("model")
    # key=value pairs where they can say it; JSON where a value holds a brace (additional_config)
    model_args = json.dumps(engine) if moi else ",".join(f"{k}={v}" for k, v in engine.items())
    result = lm_eval_samples(
        ["--model", "vllm", "--model_args", model_args, "--tasks", tasks, "--batch_size", "auto"], out, env
    )
    for task in tasks.split(","):
        assert len(result[task]) == 8, task
    return result


@pytest.fixture(scope="module")
def stock(tiny_models, tmp_path_factory):
    """Stock vLLM: every general plugin but ours (VLLM_PLUGINS), greedy."""
    return run_lm_eval(
        tiny_models["llama"], "moi_sums", tmp_path_factory.mktemp("stock"), {"VLLM_PLUGINS": PLUGINS_WITHOUT_MOI}
    )


@pytest.fixture(scope="module")
def installed(tiny_models, tmp_path_factory):
    """The plugin installed and MoI enabled; the plain task asks nothing, the other two ask MoI or direct mixture
    per request."""
    return run_lm_eval(tiny_models["llama"], TASKS, tmp_path_factory.mktemp("installed"), {}, moi=True)


def test_plugin_loaded_only_where_installed(stock, installed):
    assert "moi-demo: Mixture of Inputs installed" in installed["log"]
    assert "moi-demo: MoI enabled for this engine (additional_config moi=true)" in installed["log"]
    assert "moi-demo" not in stock["log"]


def test_no_moi_requested_equals_stock_vllm(stock, installed):
    assert installed["moi_sums"] == stock["moi_sums"]
    assert any(text.strip() for text in stock["moi_sums"])  # the comparison is of real outputs


def test_moi_and_direct_per_request_change_outputs(stock, installed):
    assert installed["moi_sums_moi"] != stock["moi_sums"]
    assert installed["moi_sums_direct"] != stock["moi_sums"]
    assert installed["moi_sums_direct"] != installed["moi_sums_moi"]


def test_mixinputs_beta_changes_outputs_as_the_same_request_would(tiny_models, stock, installed, tmp_path):
    """MIXINPUTS_BETA=1 is the default for requests that name no MoI key: the plain task then gives what
    asking beta 1 (top-k 20) per request gives."""
    env_moi = run_lm_eval(tiny_models["llama"], "moi_sums", tmp_path / "beta1", {"MIXINPUTS_BETA": "1"})
    assert env_moi["moi_sums"] != stock["moi_sums"]
    assert env_moi["moi_sums"] == installed["moi_sums_moi"]
    assert "moi-demo: MoI enabled for this engine (MIXINPUTS_BETA=1)" in env_moi["log"]

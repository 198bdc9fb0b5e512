"""A stock vLLM engine (the moi plugin not loaded) in a subprocess: the control that the plugin is measured
and checked against (`moi-demo bench`, `moi-demo doctor`).

Like with like: by default (`runner="moi"`) it runs the model runner and the inputs of a MoI-enabled engine (the V1
runner, `enable_prompt_embeds`), so that "standard == stock" and the speed ratios compare MoI's hooks, not two
runners (on CUDA, vLLM's default runner is V2). `runner="default"` is vLLM exactly as a user without moi-demo
runs it: what enabling MoI costs a GPU user.

vLLM loads general plugins in every process it starts, filtered by VLLM_PLUGINS; the plugin patches classes
of the process it loads in, so a stock engine needs a process of its own. It runs in its own session and is
ended with its whole process tree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

logger = logging.getLogger("moi_demo.serving.stock")
# An allowlist without "moi": vLLM then loads every general plugin but ours.
PLUGINS_WITHOUT_MOI = "lora_filesystem_resolver"
RUNNERS = ("moi", "default")


class StockEngine:
    """`with StockEngine(model, **engine_kwargs) as stock: stock.generate(...)`."""

    def __init__(self, model: str, runner: str = "moi", **engine_kwargs: Any):
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}; got {runner!r}")
        engine_kwargs.pop("additional_config", None)  # the plugin's switch: meaningless without the plugin
        self.runner = runner
        self.args = {"model": model, **engine_kwargs}
        if runner == "moi":
            self.args["enable_prompt_embeds"] = True
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> StockEngine:
        env = {**os.environ, "VLLM_PLUGINS": PLUGINS_WITHOUT_MOI}
        env.pop("MIXINPUTS_BETA", None)
        if self.runner == "moi":
            env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the runner a MoI-enabled engine keeps
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moi_demo.serving.stock", json.dumps(self.args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._reply()  # "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the engine core and any worker left in its session
        proc.wait()

    def _call(self, op: str, **kwargs: Any) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> Any:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("STOCK "):
                reply = json.loads(line[len("STOCK ") :])
                if "error" in reply:
                    raise RuntimeError(f"stock vLLM engine: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"stock vLLM engine exited (code {self.proc.poll()})")

    def generate(self, prompts: list[list[int]], max_tokens: int, **sampling: Any) -> list[list[int]]:
        """Token ids of each prompt (greedy unless `sampling` says otherwise; EOS ignored)."""
        return self._call("generate", prompts=prompts, max_tokens=max_tokens, sampling=sampling)

    def tokens_per_second(self, prompt: list[int], batch: int, tokens: int) -> float:
        return self._call("tps", prompt=prompt, batch=batch, tokens=tokens)


def _serve(args: dict[str, Any]) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(**args)

    def params(max_tokens: int, **sampling: Any) -> SamplingParams:
        return SamplingParams(**{"temperature": 0.0, **sampling}, max_tokens=max_tokens, ignore_eos=True)

    def reply(**kw: Any) -> None:
        sys.stdout.write("STOCK " + json.dumps(kw) + "\n")
        sys.stdout.flush()

    reply(result="ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "generate":
                outs = llm.generate(
                    [{"prompt_token_ids": p} for p in cmd["prompts"]],
                    params(cmd["max_tokens"], **cmd["sampling"]),
                    use_tqdm=False,
                )
                reply(result=[list(o.outputs[0].token_ids) for o in outs])
            elif cmd["op"] == "tps":
                start = time.perf_counter()
                outs = llm.generate(
                    [{"prompt_token_ids": cmd["prompt"]}] * cmd["batch"], params(cmd["tokens"]), use_tqdm=False
                )
                elapsed = time.perf_counter() - start
                reply(result=sum(len(o.outputs[0].token_ids) for o in outs) / elapsed)
            else:
                reply(error=f"unknown op {cmd['op']!r}")
        except Exception as e:  # report, keep serving
            reply(error=repr(e))
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    _serve(json.loads(sys.argv[1]))

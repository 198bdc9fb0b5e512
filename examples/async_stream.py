"""MoI per request with vLLM's async engine, streaming tokens as they are generated."""

import asyncio
import sys

from vllm import AsyncEngineArgs, SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM


async def main(model: str) -> None:
    args = AsyncEngineArgs(model=model, enforce_eager=True, kv_cache_memory_bytes=1 << 30,
                           additional_config={"moi": True})  # MoI enabled for this engine
    engine = AsyncLLM.from_engine_args(args)
    params = SamplingParams(max_tokens=32, temperature=0.0, output_kind=RequestOutputKind.DELTA,
                            extra_args={"moi_mode": "direct", "moi_top_k": 10})
    try:
        async for out in engine.generate("Count to ten:", params, request_id="moi-1"):
            print(out.outputs[0].text, end="", flush=True)
        print()
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "HuggingFaceTB/SmolLM2-135M-Instruct"))

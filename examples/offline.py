"""MoI per request with vLLM's offline LLM (the moi-demo plugin is loaded by vLLM automatically)."""

import sys

from vllm import LLM, SamplingParams


def main(model: str) -> None:
    # additional_config={"moi": True} enables MoI for this engine (every other engine stays stock vLLM)
    llm = LLM(model=model, enforce_eager=True, kv_cache_memory_bytes=1 << 30, additional_config={"moi": True})
    prompt = "Explain why the sky is blue in one sentence."
    standard = SamplingParams(temperature=0.6, top_p=0.8, max_tokens=48, seed=0)
    moi = SamplingParams(temperature=0.6, top_p=0.8, max_tokens=48, seed=0,
                         extra_args={"moi_mode": "moi", "moi_beta": 1.0, "moi_top_k": 20})
    for out in llm.generate([prompt, prompt], [standard, moi]):
        print(out.outputs[0].text)
    print(llm.collective_rpc("moi_stats"))  # how many steps MoI was applied


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "HuggingFaceTB/SmolLM2-135M-Instruct")

"""Run one offline vLLM job in a fresh process and print its token ids: `RESULT [[...], ...]`.

Used for engines that must not share this test process's plugin state: stock vLLM (VLLM_PLUGINS excluding moi),
an engine with the plugin installed but MoI not enabled, and a MIXINPUTS_BETA default. MoI is enabled
(additional_config {"moi": true}) unless the job gives "additional_config" (null: none passed). Also prints
`CONFIG {...}` (what the engine runs) and, with "probe" extra_args, `PROBE <error>` for one more request."""

from __future__ import annotations

import json
import sys


def main() -> None:
    job = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams

    from moi_demo.serving.settings import engine_kwargs

    engine = engine_kwargs(
        job["model"],
        moi=False,
        cpu=True,
        kv_cache_memory_bytes=256 << 20,
        enforce_eager=True,
        max_model_len=512,
        **job.get("engine", {}),
    )
    additional = job.get("additional_config", {"moi": True})
    if additional is not None:
        engine["additional_config"] = additional
    llm = LLM(**engine)
    config = llm.llm_engine.vllm_config
    print(
        "CONFIG "
        + json.dumps(
            {
                "enable_prompt_embeds": config.model_config.enable_prompt_embeds,
                "use_v2_model_runner": config.use_v2_model_runner,
            }
        )
    )

    def sampling(x):
        return SamplingParams(
            temperature=job.get("temperature", 0.0),
            seed=job.get("seed"),
            max_tokens=job["max_tokens"],
            ignore_eos=True,
            extra_args=x or None,
        )

    sps = [sampling(x) for x in job["extra_args"]]
    try:
        outs = llm.generate([{"prompt_token_ids": ids} for ids in job["prompts"]], sps)
    except Exception as e:  # a refused request: report it, as a client would see it
        print("REFUSED " + str(e))
        return
    if job.get("probe"):
        try:
            llm.generate([{"prompt_token_ids": job["prompts"][0]}], [sampling(job["probe"])])
            print("PROBE served")
        except Exception as e:
            print("PROBE " + str(e))
    stats = llm.collective_rpc("moi_stats") if job.get("stats") else None
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
    if stats is not None:
        print("STATS " + json.dumps(stats))


if __name__ == "__main__":
    main()

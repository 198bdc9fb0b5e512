"""MoI per request through `vllm serve MODEL` and the OpenAI client: pass the keys in `vllm_xargs`."""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("OPENAI_BASE_URL", "http://localhost:8000/v1"), api_key="EMPTY")
model = client.models.list().data[0].id
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=32,
    temperature=0.0,
    extra_body={"vllm_xargs": {"moi_mode": "moi", "moi_beta": 1.0, "moi_top_k": 20}},
)
print(reply.choices[0].message.content)

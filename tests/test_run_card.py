"""Run cards and replay's bookkeeping, without an engine (the engine tests: test_app.py)."""

from __future__ import annotations

import json

from moi_demo.core.config import MoIConfig
from moi_demo.core.trace import Step, Trace, save_traces
from moi_demo.evaluation.replay import LaneReplay, engine_options, load_export
from moi_demo.serving import run_card as rc


def test_a_snapshot_is_named_by_its_commit_and_a_directory_by_a_fingerprint_of_its_weights(tmp_path):
    snap = tmp_path / "models--x" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    assert rc.model_revision(str(snap)) == "hf:0123abcd"
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "model.safetensors").write_bytes(b"\x01" * (3 << 20))
    first = rc.model_revision(str(local))
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 32
    rc.model_revision.cache_clear()
    with (local / "model.safetensors").open("r+b") as f:  # one byte of the last MiB changed
        f.seek(-10, 2)
        f.write(b"\x02")
    assert rc.model_revision(str(local)) != first
    assert rc.model_revision("org/not-downloaded") == "id:org/not-downloaded"


def test_environment_and_differences():
    env = rc.environment()
    assert {"moi_demo", "git_commit", "vllm", "torch", "transformers", "python", "platform", "device"} <= set(env)
    assert env["torch"] and env["device"]
    card = {**env, "dtype": "float32", "model_revision": "hf:1"}
    assert rc.differences(card, {**env, "dtype": "float32", "model_revision": "hf:1"}) == []
    diffs = rc.differences(card, {**env, "device": "NVIDIA H200", "model_revision": "hf:2"})
    assert diffs == [
        f"device: recorded {env['device']!r}, here 'NVIDIA H200'",
        "model_revision: recorded 'hf:1', here 'hf:2'",
    ]
    assert rc._plain({"a": (1, 2), "b": {3: object}}) == {"a": [1, 2], "b": {"3": str(object)}}


def _trace(mode: str, ids: list[int]) -> Trace:
    cfg = MoIConfig(mode, 1.0, 5)
    t = Trace(
        lane="moi" if cfg.mixes else "standard",
        mode=cfg.mode,
        beta=cfg.beta,
        top_k=5,
        prompt="p",
        seed=3,
        max_tokens=len(ids),
    )
    t.steps = [
        Step(index=i, token_id=x, token=str(x), logprob=-1.0, topk_ids=[x], topk_logprobs=[-1.0], entropy=0.0)
        for i, x in enumerate(ids)
    ]
    return t


def test_an_export_carries_its_card_and_replay_reads_every_lane(tmp_path):
    path = tmp_path / "t.json"
    save_traces(
        path,
        [_trace("standard", [1, 2]), _trace("moi", [1, 3])],
        {"model": "m", "engine_options": {"max_model_len": 256, "unknown": 1}},
    )
    traces, card = load_export(path)
    assert [t.mode for t in traces] == ["standard", "moi"] and card["model"] == "m"
    assert engine_options(card).max_model_len == 256  # fields this version does not know are ignored
    app_export = {"traces": [traces[0].to_dict()], "lanes": [t.to_dict() for t in traces]}
    path.write_text(json.dumps(app_export))
    assert len(load_export(path)[0]) == 2 and load_export(path)[1] is None  # the lanes, not just the pair shown
    assert LaneReplay("MoI", 4, 4, None).line() == "MoI: identical (4 tokens)"
    assert LaneReplay("MoI", 4, 5, 2).line() == "MoI: DIFFERS from step 2 (recorded 4 tokens, replayed 5)"

"""End to end on the tiny model: `moi-demo eval`, `moi-demo sweep` and `moi-demo bench` (tiny settings:
the benchmark's numbers are not asserted, only that it runs and prints its table)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.vllm_util import ROOT

pytestmark = pytest.mark.engine
MOI_DEMO = os.path.join(os.path.dirname(sys.executable), "moi-demo")


def run(args: list[str], tmp_path) -> str:
    out = subprocess.run(
        [MOI_DEMO, *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_eval_end_to_end(tiny_models, tmp_path):
    stdout = run(
        [
            "eval",
            "--task",
            "arithmetic-1",
            "--n",
            "4",
            "--modes",
            "standard,direct,moi",
            "--beta",
            "1.0",
            "--temperature",
            "0.6",
            "--top-p",
            "0.8",
            "--seed",
            "0",
            "--max-tokens",
            "8",
            "--model",
            tiny_models["llama"],
            "--out",
            str(tmp_path / "ev"),
            "--max-model-len",
            "256",
        ],
        tmp_path,
    )
    assert "| standard |" in stdout and "| direct |" in stdout and "| moi (beta=1) |" in stdout
    assert "McNemar p =" in stdout and "95% Wilson CI" in stdout
    assert "12 samples in " in stdout and "samples/s (12 sequences at once)" in stdout
    rows = [json.loads(x) for x in (tmp_path / "ev" / "eval-arithmetic-1-n4-seed0.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["mode"] for r in rows} == {"standard", "direct", "moi (beta=1)"}
    assert all(set(r) >= {"prompt", "output", "extracted", "correct", "answer"} for r in rows)
    assert (tmp_path / "ev" / "eval-arithmetic-1-n4-seed0.html").stat().st_size > 1000
    card = json.loads((tmp_path / "ev" / "eval-arithmetic-1-n4-seed0.card.json").read_text())  # what produced them
    assert card["model"] == tiny_models["llama"] and card["runner"] == "CPUModelRunner" and card["dtype"] == "float32"
    assert card["vllm"] and card["torch"] and card["eval"]["task"] == "arithmetic-1" and card["eval"]["seed"] == 0


def test_sweep_end_to_end(tiny_models, tmp_path):
    """With MoI's switches (moi_entropy=full, moi_noise=0.3): each MoI row names them, the card holds them."""
    stdout = run(
        [
            "sweep",
            "--task",
            "countdown-3",
            "--n",
            "2",
            "--betas",
            "0,2",
            "--max-tokens",
            "8",
            "--model",
            tiny_models["llama"],
            "--out",
            str(tmp_path / "sw"),
            "--max-model-len",
            "256",
            "--entropy",
            "full",
            "--noise",
            "0.3",
        ],
        tmp_path,
    )
    assert "| moi (beta=0) · H over V, noise 0.3 |" in stdout and "| moi (beta=2) · H over V, noise 0.3 |" in stdout
    assert "| standard |" in stdout
    assert (tmp_path / "sw" / "sweep-countdown-3-n2-seed0.html").is_file()
    card = json.loads((tmp_path / "sw" / "sweep-countdown-3-n2-seed0.card.json").read_text())
    assert (card["eval"]["entropy"], card["eval"]["prior"], card["eval"]["noise"]) == ("full", "raw", 0.3)
    bad = subprocess.run(
        [MOI_DEMO, "sweep", "--noise", "-1", "--model", tiny_models["llama"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert bad.returncode == 2 and "--noise: must be a finite number >= 0; got -1.0" in bad.stderr


def test_bench_smoke(tiny_models, tmp_path):
    stdout = run(
        [
            "bench",
            "--model",
            tiny_models["llama"],
            "--repeats",
            "1",
            "--tokens",
            "4",
            "--batches",
            "1",
            "--no-compiled",
            "--no-split",
            "--plugin-batches",
            "1",
        ],
        tmp_path,
    )
    for row in (
        "a. decode tokens/s, MoI vs standard, batch 1",
        "c. tokens/s, vLLM (MoI) vs reference decoder",
        "b. side-by-side wall time",
        "f. time to first token, through the app",
        "peak RSS",
        "i. beta sweep to completion, standard + 7 MoI lanes vs one lane",
        "g. plugin's own cost: MoI vs standard tok/s, tiny model, batch 1",
        "h. standard tok/s, MoI-enabled engine vs stock vLLM (same runner), tiny model, batch 1",
    ):
        assert row in stdout
    (hook_ms,) = re.findall(r"hook_seconds per MoI decode step \(moi_stats\): batch 1: ([\d.]+) ms", stdout)
    assert float(hook_ms) > 0  # the hooks did run, and were timed


def test_bench_load_smoke(tiny_models, tmp_path):
    """The load test at smoke size: concurrent sessions, a stop and a bad input; every greedy output equals the
    same request run alone, and nothing fails unnamed."""
    stdout = run(
        [
            "bench",
            "--load",
            "--model",
            tiny_models["llama"],
            "--clients",
            "3",
            "--requests",
            "10",
            "--load-tokens",
            "6",
        ],
        tmp_path,
    )
    assert "| runs/s through the app (runs and stopped runs) |" in stdout
    assert "| errors by kind (bad inputs refused by name are not errors) | none |" in stdout
    assert "| greedy outputs different from the same request alone | 0 |" in stdout
    assert "'bad': 1" in stdout and "'stop': 1" in stdout


def test_generate_with_betas_prints_every_lane_and_its_divergence(tiny_models, tmp_path):
    from moi_demo.core.trace import first_divergence, load_traces

    stdout = run(
        [
            "generate",
            "Count to ten.",
            "--model",
            tiny_models["llama"],
            "--betas",
            "0,2,direct",
            "--max-tokens",
            "12",
            "--max-model-len",
            "256",
            "--json",
            str(tmp_path / "sweep.json"),
        ],
        tmp_path,
    )
    standard, *lanes = load_traces(tmp_path / "sweep.json")
    card = json.loads((tmp_path / "sweep.json").read_text())["run_card"]
    assert card["model"] == tiny_models["llama"] and card["runner"] == "CPUModelRunner"
    assert card["engine_options"]["max_model_len"] == 256 and card["model_revision"].startswith("sha256:")
    assert [(t.mode, t.beta) for t in lanes] == [("moi", 0.0), ("moi", 2.0), ("direct", 0.0)]
    for trace, label in zip(lanes, ["MoI (beta = 0)", "MoI (beta = 2)", "Direct mixture (w = p)"], strict=True):
        d = first_divergence(standard, trace)
        where = "same tokens as standard" if d is None else f"first differs from standard at step {d}"
        assert f"=== {label}, {where} [{len(trace.steps)} tokens" in stdout
        assert trace.text in stdout
    assert stdout.index("=== Standard [") < stdout.index("=== MoI (beta = 0)")
    bad = subprocess.run(
        [MOI_DEMO, "generate", "hi", "--betas", "0,9", "--model", tiny_models["llama"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert bad.returncode == 2 and "--betas: each beta must be from 0 to 4; got 9" in bad.stderr


def test_bench_eval_smoke(tiny_models, tmp_path):
    """Row j at smoke size: the sized engine and the app's engine give the same answers, sample for sample."""
    stdout = run(["bench", "--eval", "--model", tiny_models["llama"], "--eval-n", "4", "--eval-tokens", "4"], tmp_path)
    assert "j. eval samples/s, arithmetic-1 n = 4 x 3 modes, 4 tokens: engine sized for the job" in stdout
    assert "answers identical, sample for sample, in both engines: True" in stdout

"""The app stops at start where a GPU is present and torch cannot use it (a CPU build, an old driver): checked with
the machine's facts given (this machine has no GPU); and on this machine as it is, the check passes on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moi_demo.serving.gpu_check import MIN_DRIVER, GPUUnusableError, check_gpu, nvidia_gpus


def torch_like(available: bool, cuda: str | None, version: str = "2.13.0"):
    return SimpleNamespace(
        cuda=SimpleNamespace(is_available=lambda: available), version=SimpleNamespace(cuda=cuda), __version__=version
    )


def test_no_gpu_is_the_cpu_path():
    assert check_gpu(torch_like(False, None), gpus=[], env={}) == "cpu"


def test_usable_gpu_is_cuda():
    assert check_gpu(torch_like(True, "13.0"), gpus=["NVIDIA H200"], env={}) == "cuda"


def test_cpu_torch_on_a_gpu_machine_stops_and_says_why():
    with pytest.raises(
        GPUUnusableError,
        match=r"found NVIDIA H200, but torch 2.13.0\+cpu is a CPU build.*"
        r"requirements.txt.*MOI_DEMO_DEVICE=cpu",
    ):
        check_gpu(torch_like(False, None, "2.13.0+cpu"), gpus=["NVIDIA H200"], env={})


def test_old_driver_names_the_minimum():
    with pytest.raises(GPUUnusableError, match=rf"driver 535.104.05; CUDA 13.0 needs a driver >= {MIN_DRIVER}"):
        check_gpu(torch_like(False, "13.0"), gpus=["Tesla T4"], driver="535.104.05", env={})


def test_the_user_may_choose_the_cpu():
    assert check_gpu(torch_like(False, None), gpus=["NVIDIA H200"], env={"MOI_DEMO_DEVICE": "cpu"}) == "cpu"


def test_this_machine(tmp_path):
    import torch

    assert check_gpu() == ("cuda" if torch.cuda.is_available() else "cpu")
    gpus = tmp_path / "gpus" / "0000:01:00.0"
    gpus.mkdir(parents=True)
    (gpus / "information").write_text("Model: \t\t NVIDIA H200\nIRQ: 1\n")
    assert nvidia_gpus(str(tmp_path)) == ["NVIDIA H200"]

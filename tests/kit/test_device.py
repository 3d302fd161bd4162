import random

import numpy as np
import pytest
import torch

from course_lib.kit.device import environment_report, get_device, seed_everything


def test_default_device_follows_cuda_availability(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_override_cpu(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "CPU ")
    assert get_device() == torch.device("cpu")


def test_unknown_device_is_one_line_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "tpu")
    with pytest.raises(ValueError, match="COURSE_DEVICE") as info:
        get_device()
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(ValueError, match="COURSE_DEVICE=cuda"):
        get_device()


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3).tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


@pytest.mark.parametrize("bad", [-1, 1.5, "0"])
def test_seed_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)


def test_environment_report_has_the_facts_the_welcome_notebook_prints(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    report = environment_report()
    for key in ("python", "torch", "device", "colab", "widgets"):
        assert key in report
    assert report["torch"] == torch.__version__

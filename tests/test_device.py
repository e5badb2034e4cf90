"""Device strings: one parser for infer/demo (torch.device) and train (Lightning accelerator, devices)."""

from __future__ import annotations

import argparse

import pytest
import torch

from cxrdet.device import DEVICE_FORMS, DeviceSpec, lightning_devices, parse_device, torch_device
from cxrdet.errors import UserError
from cxrdet.flags import add_device_flag


@pytest.mark.parametrize("text, spec", [
    ("cpu", DeviceSpec("cpu")), ("cuda", DeviceSpec("cuda")), ("cuda:1", DeviceSpec("cuda", 1)),
    ("cuda:0", DeviceSpec("cuda", 0)), ("auto", DeviceSpec("auto")), (" CUDA:12 ", DeviceSpec("cuda", 12)),
])
def test_parse_device_golden(text, spec):
    assert parse_device(text) == spec


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda:a", "cpu:1", "auto:0", "1", "", "cuda:0,1", "mps"])
def test_bad_device_names_the_value_and_the_accepted_forms(bad):
    with pytest.raises(UserError) as e:
        parse_device(bad)
    assert str(e.value) == f"device {bad!r} is not a device name; expected {DEVICE_FORMS}"
    assert "cuda:N" in DEVICE_FORMS and "auto" in DEVICE_FORMS


@pytest.mark.parametrize("text, n_cuda, expected", [
    ("cpu", 2, torch.device("cpu")), ("auto", 0, torch.device("cpu")), ("auto", 2, torch.device("cuda")),
    ("cuda", 1, torch.device("cuda")), ("cuda:1", 2, torch.device("cuda", 1)), ("cuda:0", 1, torch.device("cuda", 0)),
])
def test_torch_device_golden(text, n_cuda, expected):
    assert torch_device(text, n_cuda) == expected


def test_torch_device_selects_the_gpu_index():
    assert torch_device("cuda:1", 2).index == 1


@pytest.mark.parametrize("text, n_cuda, says", [
    ("cuda", 0, "device 'cuda' asks for CUDA, but torch sees no CUDA device; use cpu or auto"),
    ("cuda:1", 0, "device 'cuda:1' asks for CUDA, but torch sees no CUDA device"),
    ("cuda:1", 1, "device 'cuda:1' asks for GPU 1, but torch sees 1 CUDA device(s) (indices 0..0)"),
    ("cuda:2", 2, "device 'cuda:2' asks for GPU 2, but torch sees 2 CUDA device(s) (indices 0..1)"),
])
def test_torch_device_absent_gpu_is_a_user_error(text, n_cuda, says):
    with pytest.raises(UserError, match="^" + says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        torch_device(text, n_cuda)


@pytest.mark.parametrize("text, pair", [
    ("cuda:1", ("gpu", [1])), ("cuda:0", ("gpu", [0])), ("cuda", ("gpu", 1)), ("cpu", ("cpu", 1)), ("auto", ("auto", 1)),
])
def test_lightning_devices_golden(text, pair):
    assert lightning_devices(text) == pair


def test_lightning_devices_bad_value():
    with pytest.raises(UserError, match="device 'gpu:1' is not a device name; expected cpu, cuda, cuda:N"):
        lightning_devices("gpu:1")


def test_device_flag_parses_and_refuses_at_parse_time(capsys):
    p = argparse.ArgumentParser(prog="x")
    add_device_flag(p, "it runs")
    assert p.parse_args([]).device == "auto"
    assert p.parse_args(["--device", "CUDA:1"]).device == "cuda:1"
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--device", "gpu"])
    assert e.value.code == 2
    assert f"argument --device: device 'gpu' is not a device name; expected {DEVICE_FORMS}" in capsys.readouterr().err

"""Device strings: one spelling of "where to run" for inference (torch) and training (Lightning).

Accepted forms: ``cpu``, ``cuda`` (the current CUDA device, GPU 0 unless CUDA_VISIBLE_DEVICES
says otherwise), ``cuda:N`` (GPU N) and ``auto`` (GPU 0 when torch sees one, else the CPU). Each
names ONE device; several GPUs for training are Lightning's ``devices`` (a count or indices).
Pure functions: the number of visible CUDA devices is an argument, so every branch is testable
without a GPU; torch is imported only to build the ``torch.device``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxrdet.errors import UserError

DEVICE_FORMS = "cpu, cuda, cuda:N (N = GPU index, e.g. cuda:1) or auto"
_PATTERN = re.compile(r"(cpu|cuda|auto)(?::(\d+))?")


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device string: ``kind`` is cpu, cuda or auto; ``index`` the GPU index of cuda:N."""

    kind: str
    index: int | None = None


def parse_device(text: str) -> DeviceSpec:
    """``"cuda:1"`` -> ``DeviceSpec("cuda", 1)``; anything but the accepted forms is a UserError."""
    value = str(text).strip().lower()
    m = _PATTERN.fullmatch(value)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UserError(f"device {text!r} is not a device name; expected {DEVICE_FORMS}")
    return DeviceSpec(m.group(1), None if m.group(2) is None else int(m.group(2)))


def torch_device(text: str, n_cuda: int):
    """The ``torch.device`` for ``text`` when torch sees ``n_cuda`` CUDA devices.

    ``auto`` falls back to the CPU; asking for CUDA (or a GPU index) that is not there is a
    UserError naming the device and what is visible.
    """
    import torch

    spec = parse_device(text)
    if spec.kind == "cpu":
        return torch.device("cpu")
    if spec.kind == "auto":
        return torch.device("cuda" if n_cuda > 0 else "cpu")
    if n_cuda == 0:
        raise UserError(f"device {text!r} asks for CUDA, but torch sees no CUDA device; use cpu or auto")
    if spec.index is None:
        return torch.device("cuda")
    if spec.index >= n_cuda:
        raise UserError(f"device {text!r} asks for GPU {spec.index}, but torch sees {n_cuda} CUDA "
                        f"device(s) (indices 0..{n_cuda - 1})")
    return torch.device("cuda", spec.index)


def lightning_devices(text: str) -> tuple[str, int | list[int]]:
    """Lightning's ``(accelerator, devices)`` for one device: ``cuda:1`` -> ``("gpu", [1])``.

    ``cuda`` is one GPU (``("gpu", 1)``), ``cpu`` one process (``("cpu", 1)``) and ``auto`` one
    device of whatever Lightning finds (``("auto", 1)``). Visibility is Lightning's to check.
    """
    spec = parse_device(text)
    if spec.kind == "cuda":
        return ("gpu", [spec.index] if spec.index is not None else 1)
    return (spec.kind, 1)

"""The device a run uses: ``auto`` (the command line's default) is CUDA when available, else the CPU.

``auto`` is resolved once, when a command starts (or by :func:`~logitlab.model.load.load_model`), so what a
run records in its config, and what its report shows, is the device it actually ran on.
"""

from __future__ import annotations

import re

import torch

from logitlab.errors import LogitlabError

__all__ = ["AUTO", "resolve_device", "device_option"]

AUTO = "auto"
_OPTION = re.compile(r"cpu|cuda(:\d+)?")


def resolve_device(device: str) -> str:
    """``device`` with ``auto`` resolved (``cuda`` when CUDA is available, else ``cpu``); a CUDA device that
    is not available is refused. Other torch devices pass unchanged."""
    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LogitlabError(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    return device


def device_option(device: str) -> str:
    """A ``--device`` option's value resolved: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (else refused)."""
    if device != AUTO and not _OPTION.fullmatch(device):
        raise LogitlabError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")
    return resolve_device(device)

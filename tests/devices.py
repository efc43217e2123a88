"""The device the device-aware tests run on: ``BIREFNET_TEST_DEVICE`` (default ``cpu``).

``benchmarks/gpu_check.py`` runs those tests with ``BIREFNET_TEST_DEVICE=cuda``; their
tolerances do not change with the device. On CUDA, TF32 is turned off so that float32 is float32
(the fixtures' 1e-4 bar is for true float32 arithmetic)."""

from __future__ import annotations

import os

import torch

ENV = "BIREFNET_TEST_DEVICE"


def test_device() -> torch.device:
    device = torch.device(os.environ.get(ENV, "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


test_device.__test__ = False  # a helper, not a test
DEVICE = test_device()

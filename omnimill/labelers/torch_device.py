"""Device and dtype choice for model teachers ("auto" = the best the worker has)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # bf16 on GPU halves memory and doubles tensor-core rate; CPU stays exact
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

"""Turn --device into a torch.device, or a clear error when that device is not here."""

from __future__ import annotations

import torch

from tracer.errors import BadInput


def resolve_device(choice: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU; cpu; cuda; cuda:N; mps."""
    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {choice}: CUDA is not available on this machine (use --device cpu)")
        index = choice.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise BadInput(f"--device {choice}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
            return torch.device("cuda", int(index))
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise BadInput("--device mps: Apple's MPS is not available on this machine (use --device cpu)")
        return torch.device("mps")
    raise BadInput(f"--device {choice!r}: choose auto, cpu, cuda, cuda:N or mps")

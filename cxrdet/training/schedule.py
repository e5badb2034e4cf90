"""The learning-rate schedule of every training command: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, warmup_factor: float, min_ratio: float) -> float:
    """LR multiplier: linear warmup from ``warmup_factor`` to 1, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

"""The learning-rate schedule: a linear warm-up, then a cosine decay to zero, stepped every batch.

Why per batch and with a warm-up: a few hundred images make only a handful of batches per epoch,
so a per-epoch schedule moves in coarse jumps, and a full learning rate on the first batches of a
fresh network (or a new head on a transferred one) throws away what the first steps could learn.
Early stopping (``train.early_stopping_patience``) may end training before the decay does.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, epochs: int, warmup_epochs: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for ``total_steps`` steps over ``epochs`` epochs, the first ``warmup_epochs`` warming up.

    The warm-up rises linearly from a tenth of the learning rate (never zero: the first step counts)
    and is capped at half the run, so a short run (the tests' 1–3 epochs) still spends most of its
    steps at a useful rate.
    """
    total = max(1, int(total_steps))
    warmup = min(int(round(warmup_epochs * total / max(1, epochs))), total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""The learning-rate schedule (warm-up, then cosine, per batch) and early stopping from params."""

from __future__ import annotations

import torch

from visionloop.training.schedule import warmup_cosine
from visionloop.training.train import early_stopping


def rates(total: int, epochs: int, warmup_epochs: float) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total, epochs, warmup_epochs)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warm_up_rises_from_a_tenth_then_the_cosine_decays_towards_zero() -> None:
    lr = rates(total=100, epochs=10, warmup_epochs=1)  # 10 warm-up steps
    assert lr[0] == 0.1 and lr[5] < lr[9] < 1.0
    assert lr[10] == 1.0 and all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))
    assert lr[-1] < 0.01


def test_a_short_run_spends_at_most_half_its_steps_warming_up() -> None:
    lr = rates(total=20, epochs=1, warmup_epochs=3)
    assert lr[10] == 1.0 and lr[9] < 1.0


def test_early_stopping_watches_val_loss_and_null_switches_it_off() -> None:
    assert early_stopping(None) == []
    (callback,) = early_stopping(7)
    assert callback.monitor == "val/loss" and callback.patience == 7

"""RecBole's Trainer plus the warm-up + cosine learning-rate schedule that RPG and ACERec train with."""

from __future__ import annotations

import math
from typing import Any

from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Linear warm-up to the base rate, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class SemanticIDTrainer(Trainer):
    """``lr_scheduler: cosine`` (default for ACERec/RPG) or ``none``; ``warmup_ratio`` of all steps.

    The schedule spans ``epochs`` x batches per epoch and advances after every optimiser step;
    early stopping simply ends it sooner. (Resuming from a checkpoint restarts the schedule.)
    """

    def fit(self, train_data: Any, *args: Any, **kwargs: Any) -> Any:
        if (self.config["lr_scheduler"] or "none").lower() == "cosine":
            total = max(1, self.epochs * len(train_data))
            warmup = max(1, int(total * (self.config["warmup_ratio"] or 0.0)))
            scheduler = LambdaLR(self.optimizer, warmup_cosine(total, warmup))
            self.optimizer.register_step_post_hook(lambda *_: scheduler.step())
        return super().fit(train_data, *args, **kwargs)

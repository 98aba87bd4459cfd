"""The LightningModule around the network (``visionloop.models.network.SmallCNN``) and the transfer-learning
strategies: the training stack, which inference never imports."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from visionloop.models.network import SmallCNN
from visionloop.params import Params

STRATEGIES = ("full", "fine_tuning", "feature_extraction")


class ImageClassifier(pl.LightningModule):
    """Lightning wrapper: losses and metrics logged as ``train/loss``, ``val/acc``, ``test/macro_f1``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: list[int] | tuple[int, ...] = (16, 32, 64),
        embedding_dim: int = 64,
        dropout: float = 0.2,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        epochs: int = 10,
        strategy: str = "full",
        fine_tune_blocks: int = 1,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not 0 <= fine_tune_blocks <= len(widths):
            raise ValueError(f"fine_tune_blocks must be between 0 and {len(widths)}, got {fine_tune_blocks}")
        self.save_hyperparameters()
        self.net = SmallCNN(num_classes, in_channels, list(widths), embedding_dim, dropout)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("train", "val", "test")
                for name, metric in (
                    ("acc", MulticlassAccuracy(num_classes, average="micro")),
                    ("macro_f1", MulticlassF1Score(num_classes, average="macro")),
                )
            }
        )

    @property
    def architecture(self) -> dict[str, Any]:
        """What it takes to rebuild this network from a state_dict (stored in the bundle)."""
        hp = self.hparams
        return {
            "num_classes": hp.num_classes,
            "in_channels": hp.in_channels,
            "widths": list(hp.widths),
            "embedding_dim": hp.embedding_dim,
            "dropout": hp.dropout,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def apply_strategy(self) -> None:
        """Freeze what the transfer-learning strategy keeps fixed."""
        strategy = self.hparams.strategy
        for p in self.net.parameters():
            p.requires_grad = strategy == "full"
        if strategy == "full":
            return
        trainable: list[nn.Module] = [self.net.head]
        if strategy == "fine_tuning":
            first_unfrozen = len(self.net.blocks) - self.hparams.fine_tune_blocks
            trainable += [self.net.embed, *self.net.blocks[first_unfrozen:]]
        for module in trainable:
            for p in module.parameters():
                p.requires_grad = True

    def on_train_epoch_start(self) -> None:
        # Lightning switches the whole module to train mode before each epoch; a frozen backbone must also keep
        # its BatchNorm statistics, or feature extraction would silently re-estimate them on the new data.
        if self.hparams.strategy == "feature_extraction":
            self.net.blocks.eval()
            self.net.embed.eval()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        preds = logits.argmax(dim=1)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        for name in ("acc", "macro_f1"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(preds, y)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc", batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):  # noqa: D102
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):  # noqa: D102
        self._step(batch, "test")

    def configure_optimizers(self):  # noqa: D102
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.hparams.epochs))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def architecture_from_params(params: Params, num_classes: int) -> dict[str, Any]:
    """The network's architecture (the bundle's ``model_config.json``) for a fresh model of params.yaml's shape."""
    return {
        "num_classes": num_classes,
        "in_channels": params.data.channels,
        "widths": list(params.model.widths),
        "embedding_dim": params.model.embedding_dim,
        "dropout": params.model.dropout,
    }

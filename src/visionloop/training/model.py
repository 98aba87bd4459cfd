"""The LightningModule around the network (``SmallCNN`` or a timm backbone, ``visionloop.models.network``) and
the transfer-learning strategies, generic over both: the training stack, which inference never imports."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from visionloop.models.backbones import SMALL_CNN
from visionloop.models.network import build_network
from visionloop.params import Params
from visionloop.training.schedule import warmup_cosine

STRATEGIES = ("full", "fine_tuning", "feature_extraction")
# The ImageClassifier arguments that shape its network (the rest are how it trains)
ARCHITECTURE_KEYS = ("backbone", "num_classes", "in_channels", "widths", "embedding_dim", "dropout", "pretrained")


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
        backbone: str = SMALL_CNN,
        pretrained: str | None = None,
        warmup_epochs: float = 0.0,
        pooling: str = "avg",
    ) -> None:
        """``backbone``/``pretrained`` as ``model.*`` in params.yaml. ``widths`` and ``embedding_dim`` shape the
        small CNN only (a timm backbone's embedding is its own pooled features); ``pretrained`` is recorded here,
        loaded by ``visionloop.training.train.build_classifier`` (a rebuilt bundle must not reload it)."""
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.save_hyperparameters()
        self.net = build_network({"backbone": backbone, "num_classes": num_classes, "in_channels": in_channels,
                                  "widths": list(widths), "embedding_dim": embedding_dim, "dropout": dropout,
                                  "pooling": pooling})
        if strategy == "fine_tuning":  # only fine-tuning needs stages (a timm model without feature_info has none)
            stages = len(self.net.transfer_stages()[0])
            if not 0 <= fine_tune_blocks <= stages:
                raise ValueError(f"fine_tune_blocks must be between 0 and {stages} (the stages of {backbone}), "
                                 f"got {fine_tune_blocks}")
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
        shape = {"widths": list(hp.widths), "pooling": hp.pooling} if hp.backbone == SMALL_CNN else {}
        return {
            "backbone": hp.backbone,
            "num_classes": hp.num_classes,
            "in_channels": hp.in_channels,
            **shape,
            "embedding_dim": self.net.embedding_dim if hp.backbone != SMALL_CNN else hp.embedding_dim,
            "dropout": hp.dropout,
            "pretrained": hp.pretrained,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def apply_strategy(self) -> None:
        """Freeze what the transfer-learning strategy keeps fixed: everything but the head (feature_extraction),
        or all but the last ``fine_tune_blocks`` stages, what follows them and the head (fine_tuning)."""
        strategy = self.hparams.strategy
        for p in self.net.parameters():
            p.requires_grad = strategy == "full"
        if strategy == "full":
            return
        trainable = list(self.net.head.parameters())
        if strategy == "fine_tuning":
            stages, after = self.net.transfer_stages()
            first_unfrozen = len(stages) - self.hparams.fine_tune_blocks
            trainable += after + [p for stage in stages[first_unfrozen:] for p in stage]
        for p in trainable:
            p.requires_grad = True

    def on_train_epoch_start(self) -> None:
        # Lightning switches the whole module to train mode before each epoch; a frozen backbone must also keep
        # its BatchNorm statistics, or feature extraction would silently re-estimate them on the new data.
        if self.hparams.strategy == "feature_extraction":
            self.net.eval()
            self.net.dropout.train()
            self.net.head.train()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        preds = logits.argmax(dim=1)
        # sync_dist: under DDP the epoch's loss is the mean over every rank's batches (a no-op in one process)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
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
        scheduler = warmup_cosine(optimizer, self.trainer.estimated_stepping_batches, self.hparams.epochs,
                                  self.hparams.warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def architecture_from_params(params: Params, num_classes: int) -> dict[str, Any]:
    """The network's architecture (the bundle's ``model_config.json``) for a fresh model of params.yaml's shape."""
    model = params.model
    shape = ({"widths": list(model.widths), "embedding_dim": model.embedding_dim, "pooling": model.pooling}
             if model.backbone == SMALL_CNN else {})
    return {
        "backbone": model.backbone,
        "num_classes": num_classes,
        "in_channels": params.data.channels,
        **shape,
        "dropout": model.dropout,
        "pretrained": model.pretrained,
    }

"""The network itself: the small CNN (or a timm backbone, ``models.backbones``) and its prediction-only copy.

Inference (``models.bundle``: serving, batch, monitoring, ``visionloop drift``) rebuilds a version from
its ``state_dict`` with ``build_network`` and never imports Lightning; training wraps the same
``SmallCNN`` in its LightningModule (``visionloop.training.model.ImageClassifier``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from visionloop.models.backbones import SMALL_CNN

POOLING = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


class SmallCNN(nn.Module):
    """Conv blocks → global pooling → embedding → classifier head. No torchvision needed."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        embedding_dim: int = 64,
        dropout: float = 0.2,
        pooling: str = "avg",
    ) -> None:
        """``pooling``: ``avg`` or ``max`` over the last feature map (``model.pooling``; bundles written before
        it existed are ``avg``). Max tells whether a feature occurs anywhere, however small a share of the image
        it covers: average pooling dilutes a shape's few corner pixels with its background."""
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {tuple(POOLING)}, got {pooling!r}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.embed = nn.Sequential(
            POOLING[pooling](1), nn.Flatten(), nn.Linear(channels, embedding_dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_classes)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.embed(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embedding(x)))

    def transfer_stages(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """The conv blocks, first to last, and what follows them (the embedding): what fine-tuning unfreezes."""
        return [list(block.parameters()) for block in self.blocks], list(self.embed.parameters())


def build_network(config: dict[str, Any]) -> nn.Module:
    """The network of a bundle's ``model_config.json`` (untrained: load its ``state_dict`` next).

    ``backbone`` absent means small_cnn: bundles written before timm backbones existed stay loadable.
    A timm network's module (and ``import timm``) is loaded only for a timm bundle.
    """
    backbone = config.get("backbone", SMALL_CNN)
    if backbone != SMALL_CNN:
        from visionloop.models.backbones import TimmNetwork

        return TimmNetwork(backbone, config["num_classes"], config["in_channels"], config["dropout"])
    return SmallCNN(
        config["num_classes"], config["in_channels"], config["widths"], config["embedding_dim"], config["dropout"],
        config.get("pooling", "avg"),  # absent: a bundle from before model.pooling existed
    )


def inference_network(network: nn.Module) -> nn.Module:
    """A prediction-only copy, about 2× faster on CPU: BatchNorm folded into the convolution before it, and
    the weights in channels_last (oneDNN's fast layout). Same outputs to ~1e-5; ``network`` is left as is.
    """

    def fold(module: nn.Module) -> None:
        for child in module.children():
            fold(child)
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                # exactly BatchNorm2d: subclasses (timm's BatchNormAct2d) also activate, and folding would drop it
                if isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d:
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()

    fast = copy.deepcopy(network).eval()
    fold(fast)
    return fast.to(memory_format=torch.channels_last)

"""Backbones from timm behind the small CNN's interface, and pretrained weights from a local file.

``model.backbone: timm:<name>`` builds any timm model as a feature extractor (``num_classes=0``: its own
classifier dropped, its pooled pre-logits features kept) under our own ``dropout`` and ``head``, so a
served, gated or monitored timm model looks exactly like ``SmallCNN``: ``embedding(x)`` (the penultimate
features drift monitoring reduces), ``head`` (a ``Linear``) and ``forward``. ``import timm`` happens only
when such a network is built (about 5 s here): small_cnn inference never pays for it.

Pretrained weights are never downloaded unless ``model.pretrained`` says ``hub``. The offline route is a
local ``.safetensors`` (read by safetensors) or ``.pth``/``.pt`` (``torch.load(weights_only=True)``: a
pickle that would run code is refused). The file must cover the whole backbone: a half-loaded backbone
trains, silently worse, so missing or mis-shaped tensors are an error, not a warning.
"""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

SMALL_CNN = "small_cnn"
TIMM_PREFIX = "timm:"
HUB = "hub"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


def timm_name(backbone: str) -> str:
    """The timm model name of ``timm:<name>``; an unknown name is an error that lists close matches."""
    import timm

    name = backbone.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else " (timm.list_models() lists them all)"
        raise ValueError(f"model.backbone {backbone!r}: timm {timm.__version__} has no model {name!r}{hint}")
    return name


class TimmNetwork(nn.Module):
    """A timm backbone → pooled features (the embedding) → dropout → our own ``Linear`` head."""

    def __init__(self, backbone: str, num_classes: int, in_channels: int, dropout: float) -> None:
        import timm

        super().__init__()
        self.name = timm_name(backbone)
        self.in_channels = in_channels
        # random weights: pretrained ones come from load_pretrained (training) or a bundle's state_dict
        self.backbone = timm.create_model(self.name, pretrained=False, num_classes=0, in_chans=in_channels)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.embedding_dim, num_classes)

    @property
    def embedding_dim(self) -> int:
        """Width of the pooled pre-logits features: what the head and drift monitoring see. timm's
        ``head_hidden_size`` where a model has a layer after pooling (MobileNetV3's 1×1 ``conv_head``), else
        ``num_features``."""
        return int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embedding(x)))

    def transfer_stages(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """The backbone's stages, first to last, and what follows the last one (e.g. a 1×1 ``conv_head``).

        A stage ends at one of timm's ``feature_info`` modules (where a feature map of a new resolution is
        taken) and holds every module between the previous feature module and it — stems, and blocks that
        ``feature_info`` skips (``blocks.2`` of a MobileNetV3) included — so ``fine_tune_blocks: N`` means
        the last N resolution stages of any timm CNN or transformer, in the network's own order.
        """
        info = getattr(self.backbone, "feature_info", None)
        if not info:
            raise ValueError(f"timm model {self.name!r} has no feature_info: its stages cannot be found")
        order = {name: i for i, (name, _) in enumerate(self.backbone.named_modules())}
        ends = []
        for entry in info:
            start = order[entry["module"]]
            descendants = [i for name, i in order.items() if name.startswith(entry["module"] + ".")]
            ends.append(max([start, *descendants]))
        stages: list[list[nn.Parameter]] = [[] for _ in ends]
        after: list[nn.Parameter] = []
        for name, parameter in self.backbone.named_parameters():
            owner = order[name.rpartition(".")[0]]
            stage = next((i for i, end in enumerate(ends) if owner <= end), None)
            (after if stage is None else stages[stage]).append(parameter)
        return stages, after


def load_pretrained(network: nn.Module, source: str, root: Path) -> int:
    """Load ``model.pretrained`` (``hub``, or a weights file, relative to ``root``) into ``network``'s backbone
    (its head stays new); returns how many tensors were loaded.

    Tensors of a classifier (timm's ``pretrained_cfg["classifier"]``, or our own ``head``) are ignored: a
    pretrained backbone is transferred to new classes. A file saved from a visionloop model (keys under
    ``backbone.``) works too. A first convolution of another channel count is adapted the way timm adapts
    its own weights (RGB summed to gray, or repeated).
    """
    if source == HUB:
        if not isinstance(network, TimmNetwork):
            raise ValueError("model.pretrained: hub needs a timm backbone (model.backbone: timm:<name>)")
        return _load_hub(network)
    target, skip = _target(network)
    state = _read_weights(root / source)  # an absolute source stays itself
    if any(key.startswith("backbone.") for key in state):  # a visionloop TimmNetwork's: its head is dropped
        state = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    state = {key: value for key, value in state.items() if not key.startswith(skip)}
    expected = target.state_dict()
    first_conv = _first_conv_weight(target)
    missing, mismatched = [], []
    for key, tensor in expected.items():
        if key not in state:
            missing.append(key)
        elif state[key].shape != tensor.shape:
            if key == first_conv and state[key].dim() == 4:
                from timm.models import adapt_input_conv

                state[key] = adapt_input_conv(tensor.shape[1], state[key])
            if state[key].shape != tensor.shape:
                mismatched.append(f"{key} {tuple(state[key].shape)} ≠ {tuple(tensor.shape)}")
    unexpected = sorted(set(state) - set(expected))
    if missing or mismatched or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(expected)} backbone tensors missing (e.g. {missing[:3]})")
        if mismatched:
            problems.append(f"{len(mismatched)} of another shape (e.g. {mismatched[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} this backbone has not (e.g. {unexpected[:3]})")
        raise ValueError(f"model.pretrained {source!r} does not fit {_describe(network)}: {'; '.join(problems)}. "
                         "Weights of another architecture or version?")
    target.load_state_dict({key: state[key] for key in expected})
    return len(expected)


def _target(network: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """The module the weights go into, and the key prefixes of classifiers to ignore."""
    if isinstance(network, TimmNetwork):
        classifier = network.backbone.pretrained_cfg.get("classifier") or ()
        names = [classifier] if isinstance(classifier, str) else list(classifier)
        return network.backbone, tuple(f"{name}." for name in names)
    # the small CNN: everything but its head
    return _WithoutHead(network), ("head.",)


class _WithoutHead(nn.Module):
    """A view of a network's modules other than ``head`` (same tensors, not copies), to load a backbone into."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        for name, child in network.named_children():
            if name != "head":
                self.add_module(name, child)


def _first_conv_weight(target: nn.Module) -> str | None:
    """The key of the first convolution's weight (timm's ``pretrained_cfg``), the one a channel count changes."""
    cfg = getattr(target, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    return f"{first}.weight" if isinstance(first, str) else None


def _describe(network: nn.Module) -> str:
    """The backbone's name as params.yaml spells it."""
    return f"timm:{network.name}" if isinstance(network, TimmNetwork) else SMALL_CNN


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a weights-only ``.pth``/``.pt`` (a pickle of objects is refused)."""
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no weights file at {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"model.pretrained: {path.name} is not one of {', '.join(WEIGHT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"model.pretrained: {path} is a pickle of more than weights; refused (it could run code "
                         "when loaded). Save a state_dict (torch.save(model.state_dict(), ...)) or .safetensors."
                         ) from error
    for key in ("state_dict", "model", "state_dict_ema"):  # checkpoints that wrap the weights
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"model.pretrained: {path} holds no state_dict of tensors")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _load_hub(network: TimmNetwork) -> int:
    """timm's own pretrained download (needs the network), adapted to the network's channel count."""
    import timm

    source = timm.create_model(network.name, pretrained=True, num_classes=0, in_chans=network.in_channels)
    network.backbone.load_state_dict(source.state_dict())
    return len(source.state_dict())

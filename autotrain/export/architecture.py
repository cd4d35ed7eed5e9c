"""Is a bare state dict torchvision's ResNet-18 layout? (what a .pth for torch users must be)"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from autotrain.errors import WeightsError
from autotrain.io.weights import match_state_dict
from autotrain.models import resnet18

_STEMS = {7: "imagenet", 3: "small"}  # conv1's kernel size -> autotrain's stem
_SHOWN = 4  # names listed per kind of problem, so the message stays one readable line


def resnet18_state(tensors: Mapping[str, np.ndarray], source: str) -> "OrderedDict[str, np.ndarray]":
    """``tensors`` in torchvision's resnet18 state_dict order, after checking that they are
    exactly such a state dict: every key, no other, every shape (any width, stem, input
    channels and classes autotrain can build). WeightsError naming ``source`` and the
    offending tensors otherwise ("wrong architecture")."""
    conv1, fc = tensors.get("conv1.weight"), tensors.get("fc.weight")
    if conv1 is None or fc is None or conv1.ndim != 4 or fc.ndim != 2 or conv1.shape[2] not in _STEMS:
        raise WeightsError(f"{source}: not a ResNet-18 state_dict (wrong architecture?): it needs conv1.weight "
                           "(width, channels, 7 or 3, 7 or 3) and fc.weight (classes, 8 x width)")
    width, channels, kernel = conv1.shape[:3]
    last = tensors.get("layer4.1.conv2.weight")
    if min(width, channels, fc.shape[0]) < 1 or last is None or last.shape != (8 * width, 8 * width, 3, 3):
        # checked before the model is built: the file must hold the largest tensor itself,
        # so a few bytes claiming a huge width cannot make us allocate a huge network
        raise WeightsError(f"{source}: not a ResNet-18 state_dict (wrong architecture?): conv1.weight "
                           f"{tuple(conv1.shape)} needs layer4.1.conv2.weight of shape {(8 * width, 8 * width, 3, 3)}")
    model = resnet18(num_classes=fc.shape[0], in_channels=channels, width=width, stem=_STEMS[kernel])
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    report = match_state_dict(shapes, tensors)
    if not report.complete:
        problems = [f"shape mismatch {name}: file {got} vs model {want}"
                    for name, want, got in report.mismatched[:_SHOWN]]
        problems += [f"missing {name}" for name in report.missing[:_SHOWN]]
        problems += [f"unexpected {name}" for name in report.unexpected[:_SHOWN]]
        counts = (f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
                  f"{len(report.mismatched)} mis-shaped")
        raise WeightsError(f"{source}: not a torchvision-layout ResNet-18 (width {width}, {_STEMS[kernel]} stem; "
                           f"wrong architecture?): {counts}: " + "; ".join(problems))
    return OrderedDict((name, tensors[name]) for name in shapes)

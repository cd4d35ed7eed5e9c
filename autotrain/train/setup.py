"""Build the model a config describes: architecture, pretrained weights, frozen parts, head.

This is where the tutorial's finetuning recipe lives: load weights by name, replace ``fc``
for the new classes, freeze what the config says (``requires_grad = False``), and give the
optimizer only what still trains. Frozen parameters record no graph, so a frozen backbone
costs about a forward pass.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import nn
from ..autograd import factory
from ..config import Config
from ..errors import ConfigError, WeightsError
from ..io.weights import LoadReport, load_weights, match_state_dict
from ..models import resnet18
from ..resources import shipped_file

HEAD = "fc"


@dataclass
class ModelSetup:
    """A model ready to train, and what the config did to it."""

    model: nn.Module
    trainable: list[str]
    frozen: list[str]
    load_report: LoadReport | None = None
    weights_path: str | None = None
    head_replaced: bool = False
    bn_eval_modules: list[str] = field(default_factory=list)

    def parameter_groups(self, base_lr: float, backbone_lr_mult: float | None = None) -> list[dict]:
        """Optimizer groups over trainable parameters, in model order (a stable position order).

        With ``backbone_lr_mult`` the non-head parameters form their own group at a lower lr.
        """
        params = dict(self.model.named_parameters())
        names = [n for n in params if n in set(self.trainable)]
        if backbone_lr_mult is None:
            return [{"params": [params[n] for n in names], "lr": base_lr, "names": names}]
        head = [n for n in names if _is_head(n)]
        body = [n for n in names if not _is_head(n)]
        groups = [{"params": [params[n] for n in head], "lr": base_lr, "names": head}]
        if body:
            groups.append({"params": [params[n] for n in body], "lr": base_lr * backbone_lr_mult,
                           "names": body, "lr_mult": backbone_lr_mult})
        return groups


def _is_head(name: str) -> bool:
    return name == HEAD or name.startswith(HEAD + ".")


def _matches(name: str, pattern: str) -> bool:
    """A pattern selects a parameter by full name, by prefix (``layer4.1.bn2``) or by glob."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def frozen_names(param_names: list[str], patterns: tuple[str, ...], freeze_backbone: bool) -> list[str]:
    """The parameter names the config freezes; ConfigError for a pattern that matches nothing."""
    frozen = set()
    unmatched = []
    for pattern in patterns:
        hits = [n for n in param_names if _matches(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        frozen.update(hits)
    if unmatched:
        blocks = sorted({n.rsplit(".", 1)[0] for n in param_names})
        raise ConfigError([f"finetune.freeze: pattern {p!r} matches no parameter; valid names include: "
                           + ", ".join(blocks) for p in unmatched])
    if freeze_backbone:
        frozen.update(n for n in param_names if not _is_head(n))
    ordered = [n for n in param_names if n in frozen]
    if len(ordered) == len(param_names):
        raise ConfigError("finetune: the freeze leaves no trainable parameter; valid names: "
                          + ", ".join(sorted({n.rsplit('.', 1)[0] for n in param_names})))
    return ordered


def _load_pretrained(model: nn.Module, path: str, num_classes: int, replace_head: bool) -> LoadReport:
    """Load weights by name; a head whose shape changed with num_classes is expected."""
    tensors = load_weights(path)
    state = model.state_dict()
    report = match_state_dict({k: v.shape for k, v in state.items()}, tensors)
    bad = [m for m in report.mismatched if not (replace_head and _is_head(m[0]))]
    if bad:
        listing = "; ".join(f"{k}: file {tuple(got)} vs model {tuple(exp)}" for k, exp, got in bad)
        raise WeightsError(f"{path}: shape mismatch for {len(bad)} tensor(s) (wrong architecture?): {listing}")
    missing_body = [k for k in report.missing if not _is_head(k)]
    if missing_body:
        raise WeightsError(f"{path}: missing {len(missing_body)} tensor(s) of the model: "
                           + ", ".join(missing_body[:8]) + (" ..." if len(missing_body) > 8 else ""))
    usable = {k: v for k, v in tensors.items() if k in state and tuple(v.shape) == tuple(state[k].shape)
              and not (replace_head and _is_head(k))}
    model.load_state_dict(usable, strict=False)
    return report


def build_model(cfg: Config, config_dir: Path | None = None) -> ModelSetup:
    """The model of ``cfg``, seeded by ``cfg.seed``, with weights, freezing and head applied.

    ``model.weights`` is read relative to ``config_dir`` when it is not found as given.
    """
    m, ft = cfg.model, cfg.finetune
    factory.manual_seed(cfg.seed)
    model = resnet18(num_classes=m.num_classes, in_channels=m.in_channels, width=m.width, stem=m.stem)
    report, weights_path = None, None
    if m.weights:
        weights_path = resolve_weights_path(m.weights, config_dir)
        report = _load_pretrained(model, weights_path, m.num_classes, ft.replace_head)
    names = [n for n, _ in model.named_parameters()]
    frozen = frozen_names(names, tuple(ft.freeze), ft.freeze_backbone)
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad = False
    bn_eval = []
    if ft.bn == "eval" and frozen:
        frozen_set = set(frozen)
        for mname, mod in model.named_modules():
            if isinstance(mod, nn.BatchNorm2d) and f"{mname}.weight" in frozen_set:
                bn_eval.append(mname)
    return ModelSetup(model, [n for n in names if n not in set(frozen)], frozen, report,
                      weights_path, bool(m.weights) and ft.replace_head, bn_eval)


def resolve_weights_path(path: str, config_dir: Path | None) -> str:
    """``path`` as given if it exists, else relative to the config's folder, else shipped (weights/...)."""
    candidates = [Path(path)]
    if config_dir is not None:
        candidates.append(config_dir / path)
    for c in candidates:
        if c.exists():
            return str(c)
    shipped = shipped_file(path)
    return str(shipped) if shipped is not None else str(path)


def set_train_mode(setup: ModelSetup) -> None:
    """train() everywhere, except frozen BatchNorm layers kept in eval (``finetune.bn: eval``)."""
    setup.model.train()
    if setup.bn_eval_modules:
        modules = dict(setup.model.named_modules())
        for name in setup.bn_eval_modules:
            modules[name].eval()


def unfreeze_all(setup: ModelSetup) -> list[str]:
    """Make every frozen parameter trainable again; returns the names unfrozen."""
    params = dict(setup.model.named_parameters())
    names = list(setup.frozen)
    for n in names:
        params[n].requires_grad = True
    setup.trainable = [n for n in params]
    setup.frozen = []
    setup.bn_eval_modules = []
    return names


def parameter_table(setup: ModelSetup) -> list[tuple[str, int, int, int]]:
    """Per top-level block: (name, total, trainable, frozen) parameter counts."""
    rows: dict[str, list[int]] = {}
    frozen = set(setup.frozen)
    for name, p in setup.model.named_parameters():
        block = name.split(".", 1)[0]
        r = rows.setdefault(block, [0, 0, 0])
        n = int(np.prod(p.shape))
        r[0] += n
        r[2 if name in frozen else 1] += n
    return [(k, *v) for k, v in rows.items()]

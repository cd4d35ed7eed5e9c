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
from ..config import Config, ModelConfig, config_from_dict
from ..errors import ConfigError, WeightsError
from ..io.checkpoint import Checkpoint
from ..io.weights import LoadReport, load_weights, match_state_dict
from ..models import resnet18
from ..resources import shipped_file

HEAD = "fc"


@dataclass
class ModelSetup:
    """A model ready to train, and what the config did to it."""

    model: nn.Module
    load_report: LoadReport | None = None
    weights_path: str | None = None
    head_replaced: bool = False
    bn_eval_modules: list[str] = field(default_factory=list)
    thawed: list[str] = field(default_factory=list)  # frozen at first, trainable since unfreeze_all

    @property
    def trainable(self) -> list[str]:
        """Names of the parameters that require a gradient, in model order."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def frozen(self) -> list[str]:
        """Names of the parameters that do not, in model order."""
        return [n for n, p in self.model.named_parameters() if not p.requires_grad]

    def parameter_groups(self, base_lr: float, backbone_lr_mult: float | None = None) -> list[dict]:
        """Optimizer groups over the trainable parameters only, each in model order.

        Without ``backbone_lr_mult``: one group at ``base_lr``. With it, the backbone gets a
        second group at ``base_lr * backbone_lr_mult`` (its ``lr_mult`` key keeps the factor
        under a schedule): the parameters thawed by :func:`unfreeze_all`, while what trained
        before keeps its lr. (The trainer asks for the multiplier only after a thaw.)
        """
        params = dict(self.model.named_parameters())
        trainable = set(self.trainable)
        names = [n for n in params if n in trainable]
        if backbone_lr_mult is None:
            return [{"params": [params[n] for n in names], "lr": base_lr, "names": names}]
        slow = set(self.thawed)
        fast_names = [n for n in names if n not in slow]
        slow_names = [n for n in names if n in slow]
        groups = [{"params": [params[n] for n in fast_names], "lr": base_lr, "names": fast_names}]
        if slow_names:
            groups.append({"params": [params[n] for n in slow_names], "lr": base_lr * backbone_lr_mult,
                           "names": slow_names, "lr_mult": backbone_lr_mult})
        return groups


def _is_head(name: str) -> bool:
    return name == HEAD or name.startswith(HEAD + ".")


def _matches(name: str, pattern: str) -> bool:
    """A pattern selects a parameter by full name, by prefix (``layer4.1.bn2``) or by glob."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _valid_names(param_names: list[str]) -> str:
    """Every module that holds parameters, top-level blocks first, in model order."""
    modules = [n.rsplit(".", 1)[0] for n in param_names]
    blocks = [n.split(".", 1)[0] for n in param_names]
    return ", ".join(dict.fromkeys(blocks + modules))


def frozen_names(param_names: list[str], patterns: tuple[str, ...], freeze_backbone: bool) -> list[str]:
    """The parameter names the config freezes, in model order.

    ConfigError (exit 2) for a pattern that matches no parameter, or a freeze that leaves
    nothing to train; both list the valid names.
    """
    frozen = set()
    unmatched = []
    for pattern in patterns:
        hits = [n for n in param_names if _matches(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        frozen.update(hits)
    if unmatched:
        raise ConfigError([f"finetune.freeze: pattern {p!r} matches no parameter "
                           "(by name, prefix or glob); valid names: " + _valid_names(param_names)
                           for p in unmatched])
    if freeze_backbone:
        frozen.update(n for n in param_names if not _is_head(n))
    ordered = [n for n in param_names if n in frozen]
    if len(ordered) == len(param_names):
        what = "finetune.freeze" + (" with finetune.freeze_backbone" if freeze_backbone else "")
        raise ConfigError(f"{what} leaves no trainable parameter; keep at least one of: "
                          + _valid_names(param_names))
    return ordered


# Missing from a file without harm: torch fills an absent counter with 0 too (files saved
# before BatchNorm had it, such as torchvision's early ImageNet weights).
_OPTIONAL = (".num_batches_tracked",)


def _load_pretrained(model: nn.Module, path: str, replace_head: bool) -> LoadReport:
    """Load weights by name into ``model``; WeightsError (exit 3) listing every key that does not fit.

    With ``replace_head`` the file's fc is not used: a shape that changed with
    ``model.num_classes`` is expected, and fc keeps its seeded initialisation.
    """
    tensors = load_weights(path)
    state = model.state_dict()
    report = match_state_dict({k: v.shape for k, v in state.items()}, tensors)
    bad = [m for m in report.mismatched if not (replace_head and _is_head(m[0]))]
    if bad:
        listing = "; ".join(f"{k}: file {tuple(got)} vs model {tuple(exp)}" for k, exp, got in bad)
        hint = (" (set finetune.replace_head: true for a new head)"
                if all(_is_head(k) for k, *_ in bad) else " (wrong architecture? check model.width/stem/in_channels)")
        raise WeightsError(f"{path}: shape mismatch for {len(bad)} tensor(s){hint}: {listing}")
    needed = [k for k in report.missing if not (replace_head and _is_head(k)) and not k.endswith(_OPTIONAL)]
    if needed:
        raise WeightsError(f"{path}: missing {len(needed)} tensor(s) of the model "
                           f"({len(report.loaded)} matched, {len(report.unexpected)} unexpected): "
                           + ", ".join(needed))
    usable = {k: tensors[k] for k in report.loaded if not (replace_head and _is_head(k))}
    model.load_state_dict(usable, strict=False)
    return report


def build_model(cfg: Config, config_dir: Path | None = None, pretrained: bool = True) -> ModelSetup:
    """The model of ``cfg``, seeded by ``cfg.seed``, with weights, freezing and head applied.

    ``model.weights`` is read relative to ``config_dir`` when it is not found as given;
    ``pretrained=False`` skips it (a resumed run loads its checkpoint over every weight).
    """
    m, ft = cfg.model, cfg.finetune
    factory.manual_seed(cfg.seed)
    model = model_from_config(m)
    report, weights_path = None, None
    if m.weights and pretrained:
        weights_path = resolve_weights_path(m.weights, config_dir)
        report = _load_pretrained(model, weights_path, ft.replace_head)
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
    return ModelSetup(model, report, weights_path, bool(m.weights) and ft.replace_head, bn_eval)


def model_from_config(m: ModelConfig) -> nn.Module:
    """The (randomly initialised) network ``m`` describes."""
    return resnet18(num_classes=m.num_classes, in_channels=m.in_channels, width=m.width, stem=m.stem)


def checkpoint_config(ckpt: Checkpoint, path) -> Config:
    """The validated config a checkpoint was trained with; WeightsError naming ``path``."""
    try:
        return config_from_dict(ckpt.metadata["config"])
    except (KeyError, ConfigError) as err:
        raise WeightsError(f"{path}: checkpoint holds no valid config ({err})") from None


def load_model_state(model: nn.Module, state: dict, path) -> None:
    """Load a checkpoint's model state strictly; WeightsError naming ``path`` on a mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: {err}") from None


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
    """Make every frozen parameter trainable again; returns the names unfrozen.

    They are remembered in ``setup.thawed``, so :meth:`ModelSetup.parameter_groups` gives
    them their own group; frozen BatchNorm layers go back to train mode with them.
    """
    params = dict(setup.model.named_parameters())
    names = list(setup.frozen)
    for n in names:
        params[n].requires_grad = True
    setup.thawed = [n for n in params if n in set(setup.thawed) | set(names)]
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

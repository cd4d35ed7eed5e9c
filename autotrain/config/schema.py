"""The typed, frozen config schema shared by ``autotrain train`` and ``autotrain finetune``.

Every model forbids unknown keys and validates in pydantic's strict mode: an ``int`` field
takes only an int (never ``true``, ``10.5`` or ``"3"``), a ``float`` field takes an int or a
float (never a bool or a string), a ``str`` field takes only a string. Cross-field rules
raise a ``cross_field`` error that lists each broken rule with the field it belongs to.

The field order here is the order of the effective config that ``config_to_yaml`` writes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "AugmentConfig",
    "Config",
    "CrossField",
    "DataConfig",
    "DistributedConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OutputConfig",
    "ScheduleConfig",
    "TrainConfig",
    "SECTIONS",
]


CrossField = tuple[str, Any, str]
"""One broken cross-field rule: (dotted field relative to the model, its value, the rule)."""


def _raise_cross_field(problems: list[CrossField]) -> None:
    """Raise every broken cross-field rule of one model as a single pydantic error.

    Pydantic locates an ``after`` model validator's error at the model itself and lets it
    raise only once; ``ctx["problems"]`` carries each rule so the loader can print one line
    per problem at ``<model loc>.<field>`` (``optimizer.nesterov: ...``).
    """
    if problems:
        summary = "; ".join(f"{field}: {rule}" for field, _, rule in problems)
        raise PydanticCustomError(
            "cross_field", "{summary}", {"summary": summary, "problems": problems}
        )


def _list_to_tuple(value: Any) -> Any:
    # YAML gives lists; a frozen config stores tuples so it stays immutable and hashable.
    # Anything else is passed on unchanged for the strict tuple check to reject.
    return tuple(value) if isinstance(value, list) else value


def _cache_setting(value: Any) -> Any:
    # YAML reads an unquoted `off` as false (and `on` as true): take them as meant.
    if value is False:
        return "off"
    if value is True:
        return "auto"
    return value


NonEmptyStr = Annotated[str, Field(min_length=1)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
StrTuple = Annotated[tuple[NonEmptyStr, ...], BeforeValidator(_list_to_tuple)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(_Section):
    """The network: a torchvision-compatible ResNet-18."""

    arch: Literal["resnet18"] = "resnet18"
    num_classes: int = Field(ge=1, description="size of the classifier head (required)")
    in_channels: int = Field(1, ge=1, description="1 for grayscale, 3 for RGB")
    width: int = Field(16, ge=1, description="channels of the first stage (torchvision: 64)")
    stem: Literal["small", "imagenet"] = "small"
    weights: NonEmptyStr | None = Field(None, description="pretrained weights file to load")


class AugmentConfig(_Section):
    """Training-time augmentation; evaluation never augments."""

    crop_padding: int = Field(0, ge=0, description="pad then random-crop back; 0 = off")
    hflip: bool = Field(False, description="random horizontal flip with p = 0.5")


class DataConfig(_Section):
    """Where the images come from and how they are split and shaped."""

    source: Literal["digits", "idx", "imagefolder", "npz"] = "digits"
    path: NonEmptyStr | None = Field(None, description="required unless source is digits")
    image_size: int = Field(16, ge=4, le=1024)
    val_fraction: Finite = Field(0.2, ge=0, lt=1)
    classes: tuple[int | str, ...] | None = Field(
        None, description="keep only these labels, relabelled 0..len-1 in this order"
    )
    augment: AugmentConfig = AugmentConfig()
    cache: Annotated[NonEmptyStr, BeforeValidator(_cache_setting)] = Field(
        "auto", description="imagefolder's decoded uint8 images: auto (user cache dir), off (RAM), "
        "or a file/folder path"
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_items(cls, value: Any) -> Any:
        # Checked by hand: an ``int | str`` union would report one error per branch.
        if not isinstance(value, (list, tuple)):
            return value
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(f"entries must be integers or strings, got {item!r}")
        if not value:
            raise ValueError("must not be empty (use null for all classes)")
        duplicates = sorted({repr(v) for v in value if list(value).count(v) > 1})
        if duplicates:
            raise ValueError(f"duplicate entries: {', '.join(duplicates)}")
        return tuple(value)

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataConfig:
        problems: list[CrossField] = []
        if self.source == "digits" and self.path is not None:
            problems.append(
                ("path", self.path, "must be null for source 'digits' (the data is built in)")
            )
        if self.source != "digits" and self.path is None:
            problems.append(("path", None, f"is required for source {self.source!r}"))
        _raise_cross_field(problems)
        return self


class OptimizerConfig(_Section):
    """SGD with PyTorch's update rule (see autotrain.optim)."""

    name: Literal["sgd"] = "sgd"
    lr: Finite = Field(0.05, gt=0)
    momentum: Finite = Field(0.9, ge=0, lt=1)
    weight_decay: Finite = Field(5.0e-4, ge=0)
    nesterov: bool = False
    dampening: Finite = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _nesterov_rule(self) -> OptimizerConfig:
        # torch.optim.SGD refuses the same combination.
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            _raise_cross_field([("nesterov", True, "requires momentum > 0 and dampening = 0")])
        return self


class ScheduleConfig(_Section):
    """Learning-rate schedule after an optional linear warmup (autotrain.optim.lr_scheduler)."""

    name: Literal["constant", "step", "cosine"] = "cosine"
    warmup_epochs: int = Field(0, ge=0, description="must be < train.epochs")
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    gamma: Finite = Field(0.1, gt=0, le=1, description="step: decay factor")


class TrainConfig(_Section):
    """Length of training and evaluation cadence."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and at the end)")


class OutputConfig(_Section):
    """Where checkpoints and logs go."""

    dir: NonEmptyStr = "runs/digits"
    keep_last: int = Field(2, ge=0, description="checkpoints kept; 0 keeps only the final one")
    report: bool = Field(False, description="write report/ (figures and index.html) when the run finishes")
    tensorboard: bool = Field(False, description="write TensorBoard event files under tb/")


class FinetuneConfig(_Section):
    """What to load, freeze and replace; read by ``autotrain train`` and ``autotrain finetune``
    alike (``finetune`` is sugar that sets some of these keys)."""

    freeze: StrTuple = Field((), description="parameter-name patterns, e.g. layer1.*")
    freeze_backbone: bool = Field(False, description="freeze everything but the head (fc)")
    replace_head: bool = Field(True, description="new fc for model.num_classes")
    bn: Literal["eval", "train"] = Field("eval", description="BatchNorm mode of frozen parts")
    unfreeze_at_epoch: int | None = Field(
        None, ge=1, description="0-based epoch at whose start frozen parameters thaw"
    )
    backbone_lr_mult: Finite = Field(0.1, gt=0, description="lr factor for non-head parameters")

    @model_validator(mode="after")
    def _unfreeze_needs_frozen(self) -> FinetuneConfig:
        if self.unfreeze_at_epoch is not None and not (self.freeze or self.freeze_backbone):
            rule = "nothing is frozen (set freeze or freeze_backbone)"
            _raise_cross_field([("unfreeze_at_epoch", self.unfreeze_at_epoch, rule)])
        return self


class DistributedConfig(_Section):
    """Data parallelism (``mpiexec -n N autotrain train``, or ``--nproc N``); one process
    ignores it."""

    sync_bn: bool = Field(False, description="BatchNorm statistics of the global batch "
                                             "(false: each rank's own shard, as torch DDP)")


class Config(_Section):
    """The whole run. Only ``model.num_classes`` has no default."""

    seed: int = Field(0, ge=0, le=2**32 - 1)
    model: ModelConfig
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out (`finetune:`) reads as null: it means
        # the defaults. A missing `model:` is reported as the key missing inside it.
        if not isinstance(data, dict):
            return data
        filled = {name: {} for name in SECTIONS if data.get(name, {}) is None}
        if "model" not in data:
            filled["model"] = {}
        return {**data, **filled} if filled else data

    @model_validator(mode="after")
    def _cross_section_rules(self) -> Config:
        # Pydantic runs this only when every section validated on its own.
        problems: list[CrossField] = []
        epochs = self.train.epochs
        if self.schedule.warmup_epochs >= epochs:
            rule = f"must be < train.epochs ({epochs})"
            problems.append(("schedule.warmup_epochs", self.schedule.warmup_epochs, rule))
        unfreeze = self.finetune.unfreeze_at_epoch
        if unfreeze is not None and unfreeze >= epochs:
            rule = f"must be < train.epochs ({epochs})"
            problems.append(("finetune.unfreeze_at_epoch", unfreeze, rule))
        classes = self.data.classes
        if classes is not None and len(classes) != self.model.num_classes:
            rule = f"must equal the number of data.classes ({len(classes)})"
            problems.append(("model.num_classes", self.model.num_classes, rule))
        padding, size = self.data.augment.crop_padding, self.data.image_size
        if padding > size:
            rule = f"must be <= data.image_size ({size})"
            problems.append(("data.augment.crop_padding", padding, rule))
        _raise_cross_field(problems)
        return self


SECTIONS: tuple[str, ...] = tuple(
    name
    for name, info in Config.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
)
"""The section names, in file order: model, data, optimizer, schedule, train, output, finetune."""

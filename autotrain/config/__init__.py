"""The config layer: a typed, frozen, strict schema read from safe YAML.

``load_config("configs/digits.yaml", ["optimizer.lr=0.1"])`` returns a :class:`Config`
or raises :class:`~autotrain.errors.ConfigError` with one line per problem.
"""

from autotrain.config.loader import (
    config_from_dict,
    config_from_yaml_text,
    config_to_dict,
    config_to_yaml,
    default_config_path,
    diff_configs,
    load_config,
)
from autotrain.config.schema import (
    SECTIONS,
    AugmentConfig,
    Config,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "SECTIONS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OutputConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_dict",
    "config_from_yaml_text",
    "config_to_dict",
    "config_to_yaml",
    "default_config_path",
    "diff_configs",
    "load_config",
]

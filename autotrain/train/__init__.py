"""Training: model set-up from a config, the loop, evaluation and the run with its checkpoints."""

from .loop import EvalResult, Reporter, confusion_matrix, evaluate, per_class_precision_recall
from .run import Interrupted, RunResult, Trainer, train
from .setup import ModelSetup, build_model

__all__ = ["Reporter", "Trainer", "train", "RunResult", "Interrupted", "ModelSetup", "build_model",
           "evaluate", "EvalResult", "confusion_matrix", "per_class_precision_recall"]

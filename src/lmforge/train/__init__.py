"""Pretraining: ``TrainConfig`` says what to run, ``Trainer(cfg).run()`` runs it (one process or torchrun)."""

from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]

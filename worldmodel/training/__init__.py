"""Training: its config, the trainer, one optimisation step, validation, logging and DDP."""
from worldmodel import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "TrainConfig": "worldmodel.training.config",
    "DataConfig": "worldmodel.training.config",
    "train": "worldmodel.training.trainer",
})

"""Training: its config, the data checks, the run directory, the `Trainer` and its loop, one
optimisation step, validation, logging and DDP."""
from worldmodel import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "TrainConfig": "worldmodel.training.config",
    "DataConfig": "worldmodel.training.config",
    "Trainer": "worldmodel.training.trainer",
    "train": "worldmodel.training.trainer",
})

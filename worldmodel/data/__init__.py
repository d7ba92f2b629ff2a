"""Data: the dataset format, clips for training, recording your own episodes, rollouts and collection."""
from worldmodel import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "CollectConfig": "worldmodel.data.config",
    "EnvConfig": "worldmodel.data.config",
    "collect": "worldmodel.data.collector",
    "load_dataset": "worldmodel.data.dataset",
    "DatasetWriter": "worldmodel.data.recorder",
    "episode_seed": "worldmodel.data.rollout",
})

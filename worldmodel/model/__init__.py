"""The world model: ViT encoder, action encoder and predictor, SIGReg, the goal energy (of one model or an
ensemble), checkpoints."""
from worldmodel import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "ModelConfig": "worldmodel.model.config",
    "WorldModel": "worldmodel.model.world_model",
    "load_trained": "worldmodel.model.world_model",
    "GoalEnergy": "worldmodel.model.energy",
    "EnsembleEnergy": "worldmodel.model.ensemble",
    "load_checkpoint": "worldmodel.model.checkpoint",
    "save_checkpoint": "worldmodel.model.checkpoint",
})

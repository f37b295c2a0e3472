from hwocr.model.adapt import attach_adapter, prepare_for_training, vision_tower
from hwocr.model.load import ModelLoadError, load_model, load_processor

__all__ = [
    "ModelLoadError",
    "attach_adapter",
    "load_model",
    "load_processor",
    "prepare_for_training",
    "vision_tower",
]

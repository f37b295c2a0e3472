from hwocr.model.adapt import attach_adapter, prepare_for_training, vision_tower
from hwocr.model.load import load_model, load_processor

__all__ = [
    "attach_adapter",
    "load_model",
    "load_processor",
    "prepare_for_training",
    "vision_tower",
]

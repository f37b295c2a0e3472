from hwocr.model.adapt import attach_adapter, merge_for_evaluation, prepare_for_training, vision_tower
from hwocr.model.load import load_model, load_processor

__all__ = [
    "attach_adapter",
    "load_model",
    "load_processor",
    "merge_for_evaluation",
    "prepare_for_training",
    "vision_tower",
]

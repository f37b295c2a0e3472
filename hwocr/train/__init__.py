from hwocr.train.collator import OcrCollator
from hwocr.train.trainer import TrainResult, train

__all__ = ["OcrCollator", "TrainResult", "train"]

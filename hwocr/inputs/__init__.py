"""What the model is fed: samples and prompts become the processor's inputs, then tensors on the device.

Every step between a Sample and the model lives here, in the order a batch takes:
- settings.py: the image mode set on a DeepSeek-OCR-2 processor when it is loaded, and hwocr's own
  settings for calling it (ProcessorSetup);
- processor.py: images and prompts through the processor (`encode`), upright, on DeepSeek's views
  (views.py), each prompt starting with one BOS (bos.py); a batch of samples for generation
  (`encode_samples`);
- pixels.py: 8-bit views normalised on the device, and a batch moved there (`pixels_to_device`);
- training.py: training batches (OcrCollator): prompt, target and EOS, labels on the target only;
- chat.py: the same for chat-template models (PaddleOCR-VL), through the model card's chat template.

DeepSeek-OCR v1's processor (hwocr/model/ocr1.py) goes through the same calls and needs no setup.
Evaluation's threads and page-locking (hwocr/evaluate/fast/encoding.py) call `encode_samples`.
"""

from hwocr.inputs.pixels import pixels_to_device, supports_raw_pixels
from hwocr.inputs.processor import encode, encode_samples
from hwocr.inputs.settings import (
    ProcessorSetup,
    copy_processor,
    image_mode_settings,
    set_up_chat_processor,
    set_up_processor,
    setup_of,
)
from hwocr.inputs.training import IGNORE_INDEX, OcrCollator

__all__ = [
    "IGNORE_INDEX",
    "OcrCollator",
    "ProcessorSetup",
    "copy_processor",
    "encode",
    "encode_samples",
    "image_mode_settings",
    "pixels_to_device",
    "set_up_chat_processor",
    "set_up_processor",
    "setup_of",
    "supports_raw_pixels",
]

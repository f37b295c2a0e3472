"""GLM-OCR's processor without its video half.

zai-org/GLM-OCR names transformers' Glm46VProcessor: an image processor, a tokenizer and a video
processor. The video processor needs torchvision, which CPU machines (and CI) lack, and OCR never
sends a video. GlmOcrProcessor is the same class with the video processor left out: images and text
go through Glm46VProcessor's own code, so the inputs are those of the model card's snippet.
"""

from transformers import Glm46VProcessor
from transformers.processing_utils import ProcessorMixin

IMAGE_TOKEN, VIDEO_TOKEN = "<|image|>", "<|video|>"
VIDEO_START, VIDEO_END = "<|begin_of_video|>", "<|end_of_video|>"


class GlmOcrProcessor(Glm46VProcessor):
    """Glm46VProcessor for images and text only (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Glm46VProcessor.__init__ without the video processor, which ProcessorMixin would require
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.video_start_id = tokenizer.convert_tokens_to_ids(VIDEO_START)
        self.video_end_id = tokenizer.convert_tokens_to_ids(VIDEO_END)

    def to_dict(self) -> dict:
        # saved under the class zai-org/GLM-OCR names, so that a saved directory reads as the hub's
        return {**super().to_dict(), "processor_class": Glm46VProcessor.__name__}

"""Training batches: prompt + image tokens + target + EOS, labels only on the target."""

from collections.abc import Sequence

import torch
from transformers import ProcessorMixin

from hwocr.data import Sample, load_image
from hwocr.inputs.chat import IGNORE_INDEX, chat_training_example, collate_chat
from hwocr.inputs.processor import encode
from hwocr.inputs.settings import setup_of
from hwocr.model.ocr1 import Ocr1Processor

# Batches are padded to a multiple of this many tokens. Every new sequence length makes the GPU's
# attention kernels plan and tune again, which dominated short runs
# (benchmarks/results/h200_run_bf16_*_pad*.json); a few shapes instead of one per batch costs a few
# padded columns, which the attention mask and the -100 labels keep out of the loss.
PAD_TO_MULTIPLE_OF = 32


class OcrCollator:
    """Builds right-padded training batches.

    Each sample is processed alone because crop mode gives each image its own number of image
    tokens; the prompt part (BOS, image tokens, instruction) is masked with -100 so the loss is on
    the transcription and the EOS that ends it.

    The collator holds the processor's setup itself: a DataLoader that starts its workers by spawn
    or forkserver pickles the collator, and the copy must encode as this one does.
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        prompt: str,
        pixel_dtype: torch.dtype = torch.float32,
        pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF,
    ):
        self.processor = processor
        self.setup = setup_of(processor)  # None: v1's processor
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pixel_dtype = pixel_dtype  # the processor emits float32; fp16/bf16 layers need their own
        self.prompt = prompt
        self.tokenizer = processor.tokenizer

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        if isinstance(self.processor, Ocr1Processor):
            return self._collate_ocr1(samples)
        if self.setup.style == "chat":
            return self._collate_chat(samples)
        sequences, labels, pixel_values, local_values, n_local = [], [], [], [], []
        for sample in samples:
            encoded = encode(
                self.processor,
                [load_image(sample.image)],
                [self.prompt],
                setup=self.setup,
                return_tensors="pt",
            )
            prompt_ids, target_ids = encoded["input_ids"][0], self._target(sample)
            sequences.append(torch.cat([prompt_ids, target_ids]))
            labels.append(torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids]))
            pixel_values.append(encoded["pixel_values"])
            n_local.append(encoded["num_local_patches"])
            if "pixel_values_local" in encoded:
                local_values.append(encoded["pixel_values_local"])

        batch = _right_pad(sequences, labels, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        batch["pixel_values"] = torch.cat(pixel_values).to(self.pixel_dtype)
        batch["num_local_patches"] = torch.cat(n_local)
        if local_values:
            batch["pixel_values_local"] = torch.cat(local_values).to(self.pixel_dtype)
        return batch

    def _collate_ocr1(self, samples: Sequence[Sample]) -> dict:
        """DeepSeek-OCR v1: the image-position mask runs along input_ids, so it is padded with them."""
        sequences, labels, image_masks, views, grids = [], [], [], [], []
        for sample in samples:
            encoded = encode(self.processor, [load_image(sample.image)], [self.prompt])
            prompt_ids, target_ids = encoded["input_ids"][0], self._target(sample)
            sequences.append(torch.cat([prompt_ids, target_ids]))
            labels.append(torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids]))
            image_masks.append(encoded["images_seq_mask"][0])
            views.extend(encoded["images"])
            grids.append(encoded["images_spatial_crop"])
        batch = _right_pad(sequences, labels, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        batch["images_seq_mask"] = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for row, mask in enumerate(image_masks):
            batch["images_seq_mask"][row, : len(mask)] = mask
        batch["images"] = [(tiles.to(self.pixel_dtype), view.to(self.pixel_dtype)) for tiles, view in views]
        batch["images_spatial_crop"] = torch.cat(grids)
        return batch

    def _collate_chat(self, samples: Sequence[Sample]) -> dict:
        """Chat-template models: each sample's conversation with its transcription (chat.py, or the
        model's own builder that its setup names)."""
        build = self.setup.training_example or chat_training_example
        examples = [build(self.processor, load_image(s.image), self.prompt, s.text) for s in samples]
        return collate_chat(examples, self.tokenizer.pad_token_id, self.pad_to_multiple_of, self.pixel_dtype)

    def _target(self, sample: Sample) -> torch.Tensor:
        """The transcription's tokens and EOS: what the loss is computed on."""
        ids = self.tokenizer(sample.text, add_special_tokens=False)["input_ids"]
        return torch.tensor([*ids, self.tokenizer.eos_token_id])


def _right_pad(
    sequences: list[torch.Tensor], labels: list[torch.Tensor], pad_id: int, multiple: int = 1
) -> dict[str, torch.Tensor]:
    length = -(-max(len(s) for s in sequences) // multiple) * multiple
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    label_ids = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
        input_ids[row, : len(seq)] = seq
        label_ids[row, : len(lab)] = lab
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "labels": label_ids, "attention_mask": attention_mask}

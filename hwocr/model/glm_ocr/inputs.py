"""GLM-OCR's training examples: the generation prompt, then the answer and one EOS.

Generation's inputs are the model card's snippet (hwocr/inputs/chat.py): one user turn, the image and
the OCR prompt, through GLM-OCR's chat template with the generation prompt added, which ends in
`<|assistant|>\\n`. A training example is exactly those inputs with the transcription's tokens and
the tokenizer's EOS (`<|endoftext|>`, one of the ids GLM-OCR's generation stops on) appended, labels
on those alone. This is how LLaMA-Factory trains GLM chat models (its `glm4v` template: the answer
after the user turn, closed by the tokenizer's EOS; the public GLM-OCR fine-tunes used its `glm_ocr`
template), and it needs no rendering of an assistant turn, which GLM's templates frame differently
from what generation emits.
"""

import torch

from hwocr.inputs.chat import IGNORE_INDEX, generation_prompt
from hwocr.inputs.views import upright


def answer_after_prompt(processor, image, prompt: str, answer: str) -> dict[str, torch.Tensor]:
    """One example in chat.collate_chat's layout: sequence keys (length,), image keys as the
    processor gives them, `labels` on the answer and its EOS only."""
    [image] = upright([image])
    inputs = generation_prompt(processor, image, prompt)
    tokenizer = processor.tokenizer
    answer_ids = torch.tensor(
        [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id], dtype=torch.long
    )
    prompt_ids = inputs["input_ids"][0]
    example = {
        "input_ids": torch.cat([prompt_ids, answer_ids]),
        "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer_ids]),
        "attention_mask": torch.cat([inputs["attention_mask"][0], torch.ones_like(answer_ids)]),
    }
    if "mm_token_type_ids" in inputs:  # the answer is text (type 0): M-RoPE positions follow from it
        types = inputs["mm_token_type_ids"][0]
        example["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(answer_ids, dtype=types.dtype)])
    for key, value in inputs.items():
        if key not in example and key != "mm_token_type_ids":
            example[key] = value
    return example

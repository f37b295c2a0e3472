"""Inputs of chat-template models (PaddleOCR-VL and the like), built as their model cards build them.

Generation's inputs are `processor.apply_chat_template` on one user turn per image (the image, then
the OCR prompt as text), tokenized by the processor with the generation prompt added: exactly the
transformers snippet of the model cards. A training example is the same conversation with the
transcription as the assistant's turn, rendered by the same template, so the prompt's tokens are
those generation sees; the labels are the assistant's tokens up to and including the first EOS
(what ends the model's own generation), nothing after it.
"""

import torch
from transformers import BatchFeature

from hwocr.inputs.views import upright

IGNORE_INDEX = -100


def conversation(image, prompt: str, answer: str | None = None) -> list[dict]:
    turns = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
    ]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def encode_chat(
    processor, images: list, prompts: list[str], return_tensors="pt", **processor_kwargs
) -> BatchFeature:
    """Generation's inputs: the model card's apply_chat_template, one conversation per image;
    `processor_kwargs` (e.g. padding=True) go to the processor's call."""
    conversations = [
        conversation(image, prompt) for image, prompt in zip(upright(images), prompts, strict=True)
    ]
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors=return_tensors,
        processor_kwargs=processor_kwargs,
    )


def generation_prompt(processor, image, prompt: str) -> BatchFeature:
    """What generation sees of one (upright) image, as a batch of one: the user turn through the chat
    template with the generation prompt added; a training example starts with exactly these tokens."""
    return processor.apply_chat_template(
        [conversation(image, prompt)],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


def chat_training_example(processor, image, prompt: str, answer: str) -> dict[str, torch.Tensor]:
    """One example: every key of the processor's output for the whole conversation, and `labels`
    on the assistant's tokens through the first EOS. Sequence keys are (length,), others as the
    processor gave them."""
    [image] = upright([image])
    prompt_ids = generation_prompt(processor, image, prompt)["input_ids"][0]
    full = processor.apply_chat_template(
        [conversation(image, prompt, answer)], tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = full["input_ids"][0]
    start = len(prompt_ids)
    if not torch.equal(ids[:start], prompt_ids):
        raise ValueError(
            "the chat template renders the prompt differently with and without the answer, so the "
            "training prompt would differ from generation's"
        )
    eos = (ids[start:] == processor.tokenizer.eos_token_id).nonzero()
    end = start + int(eos[0]) + 1 if len(eos) else len(ids)  # the first EOS ends generation
    example = {}
    for key, value in full.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == len(ids):
            example[key] = value[0, :end]  # runs along the sequence
        else:
            example[key] = value
    labels = example["input_ids"].clone()
    labels[:start] = IGNORE_INDEX
    example["labels"] = labels
    return example


def collate_chat(examples: list[dict], pad_id: int, multiple: int, pixel_dtype: torch.dtype) -> dict:
    """Right-padded batch: sequence keys padded (input_ids with the pad id, labels with -100, the
    rest with 0), the image tensors concatenated in order, floating ones cast to `pixel_dtype`."""
    longest = max(len(e["input_ids"]) for e in examples)
    length = -(-longest // multiple) * multiple
    sequence_keys = [k for k, v in examples[0].items() if isinstance(v, torch.Tensor) and v.dim() == 1]
    batch = {}
    for key in sequence_keys:
        fill = pad_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        padded = torch.full((len(examples), length), fill, dtype=examples[0][key].dtype)
        for row, example in enumerate(examples):
            padded[row, : len(example[key])] = example[key]
        batch[key] = padded
    for key in examples[0]:
        if key in sequence_keys:
            continue
        values = torch.cat([e[key] for e in examples])
        batch[key] = values.to(pixel_dtype) if values.is_floating_point() else values
    return batch

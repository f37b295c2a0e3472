"""Exactly one BOS at the start of every prompt, whatever the tokenizer's post-processor does.

DeepSeek's own code builds the prompt as BOS (id 0, hard-coded) followed by the prompt text tokenized
with add_special_tokens=False. hwocr tokenizes the same way (encode() in processor.py passes
add_special_tokens=False) and puts the tokenizer's BOS in front itself, so a checkpoint whose
tokenizer adds no BOS, or adds one of its own, still gets what DeepSeek's code feeds the model.
"""

import torch


def with_one_bos(inputs, bos_id: int, pad_id: int, padding_side: str):
    """`inputs` (input_ids and attention_mask, tensors) with each row's real tokens starting with
    exactly one `bos_id`: leading BOS tokens already there are dropped, one is put in front, and the
    rows are padded again on `padding_side`."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows = []
    for row, row_mask in zip(ids, mask, strict=True):
        real = row[row_mask.bool()]
        start = 0
        while start < len(real) and real[start] == bos_id:
            start += 1
        rows.append(torch.cat([real.new_tensor([bos_id]), real[start:]]))
    length = max(len(r) for r in rows)
    new_ids = ids.new_full((len(rows), length), pad_id)
    new_mask = mask.new_zeros((len(rows), length))
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        new_ids[i, span] = row
        new_mask[i, span] = 1
    inputs["input_ids"], inputs["attention_mask"] = new_ids, new_mask
    return inputs

"""Causal-LM loss computed from logits at the target positions only.

A line sample has ~280 positions (257 image tokens, the prompt) but only its transcription and EOS
(~20-40 tokens) carry a label. The stock forward projects every position to the 129,280-token
vocabulary and the loss upcasts those logits to fp32 (280 x 129,280 x 4 bytes, ~0.15 GB per
sample), and the head's matmul runs on positions whose loss is masked out. Here the model is asked for
logits only at the columns that predict a label (`logits_to_keep` as an index tensor, shared by
the batch: the union over rows), and the labels are sliced to match, so the loss is the same
number as transformers' full-logits ForCausalLMLoss.
"""

import torch
import torch.nn.functional as F

from hwocr.inputs import IGNORE_INDEX


def target_columns(labels: torch.Tensor) -> torch.Tensor:
    """Columns j whose logits predict a label (labels[:, j + 1] != IGNORE_INDEX in some row)."""
    predicts = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return predicts.nonzero().squeeze(-1)


def causal_lm_loss_on_targets(
    model: torch.nn.Module, inputs: dict, num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, object]:
    """(loss, outputs) like `model(**inputs).loss`, with logits only where a label follows."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    columns = target_columns(labels)
    outputs = model(**inputs, logits_to_keep=columns, use_cache=False)
    logits = outputs.logits.float()  # (batch, len(columns), vocab), as ForCausalLMLoss upcasts
    shifted = labels[:, columns + 1].to(logits.device)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if num_items_in_batch is None:
        loss = loss / (shifted != IGNORE_INDEX).sum().clamp(min=1)
    else:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss, outputs

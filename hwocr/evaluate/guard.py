"""A repetition guard for greedy decoding: a windowed no-repeat n-gram logits processor.

DeepSeek's vLLM scripts guard DeepSeek-OCR(-2) against loops this way: a token is banned when it
would complete an n-gram that already occurs among the last `window` generated tokens (n 20-40 over
50-90 tokens there, with `<td>`/`</td>` never banned). Unlike transformers' no_repeat_ngram_size it
looks only at generated tokens (not the prompt's run of identical image tokens) and forgets what
lies further back than the window.

The processor also records, per sequence, whether it ever banned the token greedy decoding was
about to choose: the samples whose output the guard changed.
"""

import logging

import torch
from transformers import LogitsProcessor

log = logging.getLogger(__name__)


class WindowedNoRepeatNGram(LogitsProcessor):
    """Ban a token that would repeat an n-gram from the last `window` generated tokens.

    Generated tokens are those after the first `prompt_length` columns of input_ids (a left-padded
    batch shares one prompt length). window=0 looks back over the whole generation. Sequences that
    produced a stop token are left alone and never counted.
    """

    def __init__(
        self,
        ngram: int,
        window: int,
        prompt_length: int,
        whitelist: tuple[int, ...] = (),
        stop_ids: tuple[int, ...] = (),
    ):
        if ngram < 1 or window < 0:
            raise ValueError(f"repetition guard needs ngram >= 1 and window >= 0, got {ngram}, {window}")
        self.ngram = ngram
        self.window = window
        self.prompt_length = prompt_length
        self.whitelist = torch.tensor(sorted(set(whitelist)), dtype=torch.long)
        self.stop_ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
        self.changed: torch.Tensor | None = None  # per sequence: a banned token was the greedy choice

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.changed is None:  # the first step: state on the device decoding runs on
            device = input_ids.device
            self.changed = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
            self.whitelist, self.stop_ids = self.whitelist.to(device), self.stop_ids.to(device)
        generated = input_ids[:, self.prompt_length :]
        steps, n = generated.shape[1], self.ngram
        if steps < n:
            return scores
        start = max(0, steps - self.window) if self.window else 0
        history = generated[:, start:]
        if history.shape[1] < n:  # a window shorter than n holds no n-gram
            return scores
        # every n-gram that starts in the window and ends before the current position
        ngrams = history.unfold(1, n, 1)  # (batch, count, n)
        prefix = generated[:, steps - n + 1 :]  # the last n-1 tokens: (batch, n-1)
        matches = (ngrams[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (batch, count)
        banned = ngrams[:, :, -1]
        matches &= ~torch.isin(banned, self.whitelist)
        matches &= ~torch.isin(generated, self.stop_ids).any(dim=1, keepdim=True)
        chosen = scores.argmax(dim=-1, keepdim=True)
        self.changed |= (matches & (banned == chosen)).any(dim=1)
        # -inf added at each banned token; adding 0 elsewhere leaves every other score as it was
        penalty = torch.zeros_like(matches, dtype=scores.dtype).masked_fill(matches, float("-inf"))
        return scores.scatter_add(1, banned, penalty)


def token_ids(tokenizer, tokens: list[str]) -> tuple[int, ...]:
    """Ids of the whitelist's tokens; a token this vocabulary lacks is skipped, and said so once."""
    ids, missing = [], []
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            missing.append(token)
        else:
            ids.append(token_id)
    if missing:
        log.info("repetition guard: %s not in this vocabulary; no whitelist entry for it", ", ".join(missing))
    return tuple(ids)

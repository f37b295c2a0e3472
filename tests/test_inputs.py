"""The training collator pickled into a DataLoader worker builds the batches it builds at home."""

import pickle
from dataclasses import replace

import pytest
import torch

from hwocr.inputs import OcrCollator, setup_of
from hwocr.model import load_processor

PROMPT = "<image>\nFree OCR."


@pytest.mark.parametrize("mode", ["base", "small"])
def test_a_pickled_collator_builds_the_same_batch(tiny_model_config, render_lines, mode):
    """DataLoader workers started by spawn or forkserver get the collator pickled: its processor
    arrives as a new object, so the settings for calling it must travel with the collator."""
    lines = render_lines([(300, 60), (900, 80), (1400, 70)])
    collator = OcrCollator(load_processor(replace(tiny_model_config, image_mode=mode)), PROMPT)
    copy = pickle.loads(pickle.dumps(collator))
    assert setup_of(copy.processor) is None  # the premise: nothing is found beside the new processor

    home, worker = collator(lines), copy(lines)
    assert set(worker) == set(home)
    for key in home:
        assert worker[key].dtype == home[key].dtype, key
        assert torch.equal(worker[key], home[key]), key

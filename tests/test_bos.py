"""Prompts start with exactly one BOS, in training batches and in generation inputs, whatever the
tokenizer's post-processor adds (DeepSeek's code: BOS id 0, then the prompt without special tokens)."""

from dataclasses import replace

import pytest
import torch
from tokenizers import processors

from hwocr.inputs import OcrCollator, encode
from hwocr.inputs.bos import with_one_bos
from hwocr.model import load_processor

PROMPT = "<image>\nFree OCR."
# what the tokenizer's post-processor does to a single text
TEMPLATES = {
    "adds BOS": None,  # the tiny tokenizer's own, like the real checkpoint's
    "adds nothing": "$A",
    "adds BOS twice and EOS": "{bos} {bos} $A {eos}",
}


@pytest.fixture(scope="module")
def samples(render_lines):
    return render_lines([(300, 60), (900, 60), (1500, 60)])  # 0, 2 and more crops in dynamic mode


def processor_with(cfg, template: str | None):
    processor = load_processor(cfg)
    tokenizer = processor.tokenizer
    if template is not None:
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=template.format(bos=bos, eos=eos),
            special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
        )
    return processor


def assert_one_bos_first(input_ids, attention_mask, tokenizer):
    for row, mask in zip(input_ids, attention_mask, strict=True):
        real = row[mask.bool()].tolist()
        assert real[0] == tokenizer.bos_token_id
        assert real.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_generation_and_training_inputs_start_with_one_bos(tiny_model_config, samples, template):
    cfg = replace(tiny_model_config, image_mode="dynamic")
    processor = processor_with(cfg, TEMPLATES[template])
    tokenizer = processor.tokenizer
    if TEMPLATES[template] is not None:  # the replaced post-processor is really in effect
        plain = tokenizer("xin chào")["input_ids"]
        assert plain.count(tokenizer.bos_token_id) == TEMPLATES[template].count("{bos}")

    from hwocr.data import load_image

    images = [load_image(s.image) for s in samples]
    inputs = encode(processor, images, [PROMPT] * len(images), padding=True, return_tensors="pt")
    assert (inputs["attention_mask"] == 0).any()  # left padding is present in this batch
    assert_one_bos_first(inputs["input_ids"], inputs["attention_mask"], tokenizer)
    assert not (inputs["input_ids"] == tokenizer.eos_token_id).any()

    batch = OcrCollator(processor, PROMPT)(samples)
    assert_one_bos_first(batch["input_ids"], batch["attention_mask"], tokenizer)
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()  # right-padded: BOS in column 0

    # and the ids equal those built from the tokenizer's own default, image tokens included
    reference = encode(
        processor_with(cfg, None), images, [PROMPT] * len(images), padding=True, return_tensors="pt"
    )
    assert torch.equal(inputs["input_ids"], reference["input_ids"])
    assert torch.equal(inputs["attention_mask"], reference["attention_mask"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_with_one_bos_rebuilds_padding(side):
    bos, pad = 0, 9
    rows = [[5, 6], [0, 0, 7, 8, 4]]  # no BOS; two BOS
    length = max(map(len, rows))
    ids = torch.full((2, length), pad)
    mask = torch.zeros((2, length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    out = with_one_bos({"input_ids": ids, "attention_mask": mask}, bos, pad, side)
    want = [[0, 5, 6], [0, 7, 8, 4]]
    assert out["input_ids"].shape == (2, 4)
    for row, mask_row, expected in zip(out["input_ids"], out["attention_mask"], want, strict=True):
        assert row[mask_row.bool()].tolist() == expected
        assert (row[~mask_row.bool()] == pad).all()
        real = mask_row.nonzero().flatten()
        assert real.tolist() == (
            list(range(4 - len(expected), 4)) if side == "left" else list(range(len(expected)))
        )

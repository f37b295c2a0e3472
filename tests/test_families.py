"""The chat-template families (PaddleOCR-VL, GLM-OCR) on their tiny random checkpoints: hwocr feeds each
model what its model card's transformers snippet feeds it, trains on the transcription alone, transcribes
a batch as it transcribes each image alone, refuses DeepSeek's settings, and runs the product end to
end. One table of cases holds what the families share; what differs is in the family's own tests
(below, and tests/test_glm_ocr.py)."""

from dataclasses import dataclass, replace

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from hwocr.config import FAMILIES, HardwareConfig, compose_config, register_schema, to_config
from hwocr.data import Sample
from hwocr.errors import ConfigError
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.inputs import OcrCollator, encode, encode_samples
from hwocr.inputs.chat import IGNORE_INDEX
from hwocr.model.families import family
from hwocr.model.load import load_model, load_processor, warn_unpinned
from tests.conftest import FinishedRun, small_demo

register_schema()

FONT = "hwocr/data/fonts/mali.ttf"
# a word, a line and a paragraph, at the sizes of UIT-HWDB's (scaled to the tiny processors' range)
PAGES = {
    "word": ("chào", (90, 48)),
    "line": ("Tôi yêu tiếng Việt và học sinh đi học", (800, 60)),
    "paragraph": ("mưa rơi ướt át\nĐường về quê hương\nxin chào bạn", (420, 300)),
}


@dataclass(frozen=True)
class FamilyCase:
    """A chat-template family as its model card shows it."""

    family: str  # model.family
    tiny: str  # conf/model/<tiny>.yaml: the family's tiny random twin (fixture <tiny>_config)
    experiment: str  # conf/experiment/<experiment>.yaml: the preset for the released model
    source: str  # the released model's hub id
    prompt: str  # the model card's OCR prompt
    eos: str  # what ends an answer
    image_token: str
    # the card's chat template on one image and the prompt; {images} = the image tokens
    rendered: str

    def rendering(self, n_image_tokens: int) -> str:
        return self.rendered.format(images=self.image_token * n_image_tokens, prompt=self.prompt)


FAMILY_CASES = [
    pytest.param(
        FamilyCase(
            family="paddleocr_vl",
            tiny="tiny_paddleocr_vl",
            experiment="lines_paddleocr_vl",
            source="PaddlePaddle/PaddleOCR-VL",
            prompt="OCR:",
            eos="</s>",
            image_token="<|IMAGE_PLACEHOLDER|>",
            rendered="<|begin_of_sentence|>User: <|IMAGE_START|>{images}<|IMAGE_END|>{prompt}\nAssistant:\n",
        ),
        id="paddleocr_vl",
    ),
    pytest.param(
        FamilyCase(
            family="glm_ocr",
            tiny="tiny_glm_ocr",
            experiment="lines_glm_ocr",
            source="zai-org/GLM-OCR",
            prompt="Text Recognition:",
            eos="<|endoftext|>",
            image_token="<|image|>",
            rendered="[gMASK]<sop><|user|>\n<|begin_of_image|>{images}<|end_of_image|>{prompt}<|assistant|>\n",
        ),
        id="glm_ocr",
    ),
]


@dataclass
class Family:
    case: FamilyCase
    cfg: object  # the tiny twin's ModelConfig, composed from its YAML
    processor: object


@pytest.fixture(scope="module", params=FAMILY_CASES)
def chat_family(request) -> Family:
    case = request.param
    cfg = request.getfixturevalue(f"{case.tiny}_config")
    return Family(case, cfg, load_processor(cfg))


def page(text: str, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).multiline_text((6, 4), text, fill="black", font=ImageFont.truetype(FONT, 16))
    return image


def saved_pages(folder, pages) -> list[Sample]:
    samples = []
    for name, (text, size) in pages:
        page(text, size).save(folder / f"{name}.png")
        samples.append(Sample(id=name, writer="w", split="test", image=folder / f"{name}.png", text=text))
    return samples


def card_inputs(processor, images: list, prompt: str):
    """The model card's snippet (huggingface.co/PaddlePaddle/PaddleOCR-VL, huggingface.co/zai-org/GLM-OCR):
    a user turn with the image and the prompt through the processor's chat template, tokenized, as a
    left-padded batch where several."""
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
        for image in images
    ]
    if len(images) == 1:
        return processor.apply_chat_template(
            messages[0], tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    processor.tokenizer.padding_side = "left"  # transformers' advice for batched generation
    return processor.apply_chat_template(
        messages,
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )


def assert_same_inputs(ours, theirs):
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_inputs_equal_the_model_cards(chat_family, kind, tmp_path):
    """Generation's inputs for one image, from memory and from a file, equal the card's snippet: ids,
    mask, modality types, pixels, grids; the image tokens are one run, one per 2 x 2 patches, and the
    ids render as the card's chat template does."""
    case, processor, prompt = chat_family.case, chat_family.processor, chat_family.cfg.prompt
    [sample] = saved_pages(tmp_path, [(kind, PAGES[kind])])
    image = page(*PAGES[kind])
    theirs = card_inputs(processor, [image], prompt)
    ours = encode(processor, [image], [prompt], return_tensors="pt")
    assert_same_inputs(ours, theirs)
    assert_same_inputs(encode_samples(processor, [sample], prompt), theirs)
    ids = ours["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(case.image_token)
    positions = (ids == image_id).nonzero().flatten()
    assert len(positions) == int(ours["image_grid_thw"][0].prod()) // 4
    assert torch.equal(positions, torch.arange(positions[0], positions[0] + len(positions)))
    assert torch.equal(ours["mm_token_type_ids"][0].bool(), ids == image_id)
    assert processor.tokenizer.decode(ids) == case.rendering(len(positions))


def test_a_left_padded_batch_equals_the_card_and_each_image_alone(chat_family, tmp_path):
    case, processor, prompt = chat_family.case, chat_family.processor, chat_family.cfg.prompt
    samples = saved_pages(tmp_path, PAGES.items())
    batch = encode_samples(processor, samples, prompt)
    images = [Image.open(s.image).convert("RGB") for s in samples]
    assert_same_inputs(batch, card_inputs(processor, images, prompt))
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # padded, and every row ends in the prompt
    start = 0
    for row, (image, grid) in enumerate(zip(images, batch["image_grid_thw"], strict=True)):
        alone = encode(processor, [image], [prompt], return_tensors="pt")
        real = mask[row].bool()
        assert not real[: len(real) - real.sum()].any(), "padding must be on the left"
        assert torch.equal(batch["input_ids"][row][real], alone["input_ids"][0])
        assert processor.tokenizer.decode(batch["input_ids"][row][real]) == case.rendering(
            int(grid.prod()) // 4
        )
        n = len(alone["pixel_values"])
        assert torch.equal(batch["pixel_values"][start : start + n], alone["pixel_values"])
        start += n


def test_training_rows_are_generations_prompt_then_the_transcription_and_eos(chat_family, tmp_path):
    """A training row is generation's inputs (ids, modality types, pixels) followed by the
    transcription's tokens and the EOS, marked as text; labels are on those alone."""
    case, processor, prompt = chat_family.case, chat_family.processor, chat_family.cfg.prompt
    tokenizer = processor.tokenizer
    assert tokenizer.eos_token == case.eos
    samples = saved_pages(tmp_path, PAGES.items())
    batch = OcrCollator(processor, prompt)(samples)
    pixels_at = 0
    for row, sample in enumerate(samples):
        theirs = card_inputs(processor, [Image.open(sample.image).convert("RGB")], prompt)
        n = theirs["input_ids"].shape[1]
        length = int(batch["attention_mask"][row].sum())
        answer = [*tokenizer(sample.text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert length == n + len(answer)
        assert torch.equal(batch["input_ids"][row, :n], theirs["input_ids"][0])
        assert batch["input_ids"][row, n:length].tolist() == answer
        labels = batch["labels"][row]
        assert (labels[:n] == IGNORE_INDEX).all() and (labels[length:] == IGNORE_INDEX).all()
        assert labels[n:length].tolist() == answer
        assert tokenizer.decode(answer[:-1]) == sample.text
        types = batch["mm_token_type_ids"][row]
        assert torch.equal(types[:n], theirs["mm_token_type_ids"][0])
        assert (types[n:] == 0).all()
        count = theirs["pixel_values"].shape[0]
        assert torch.equal(batch["pixel_values"][pixels_at : pixels_at + count], theirs["pixel_values"])
        pixels_at += count


def test_batched_and_one_by_one_transcriptions_are_identical(chat_family, tmp_path):
    """With a short repetition guard, each token is the best one not banned: small differences in
    the logits (padding that leaks into attention or positions) change the text."""
    processor, cfg = chat_family.processor, chat_family.cfg
    model = load_model(cfg, HardwareConfig())
    samples = saved_pages(
        tmp_path, [*PAGES.items(), ("one", ("một", (60, 40))), ("two", ("hai ba", (300, 50)))]
    )
    settings = GenerationSettings(
        prompt=cfg.prompt, max_new_tokens=12, no_repeat_ngram=1, no_repeat_window=0
    ).reference()
    batched, _ = transcribe(model, processor, samples, replace(settings, batch_size=len(samples)))
    alone, _ = transcribe(model, processor, samples, replace(settings, batch_size=1))
    assert [p.prediction for p in batched] == [p.prediction for p in alone]
    assert len({p.prediction for p in alone}) > 1  # the random model writes different texts: a real check
    assert not any(p.error for p in batched)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.memory_optimizations=true"], "model.memory_optimizations"),
        (["backend=unsloth", "hardware=t4"], "backend=unsloth"),
        (["model.image_mode=dynamic"], "model.image_mode"),
    ],
)
@pytest.mark.parametrize("case", FAMILY_CASES)
def test_deepseek_only_settings_are_refused_by_key(case, overrides, key):
    with pytest.raises(ConfigError, match=key):
        to_config(compose_config(f"model={case.family}", *overrides))


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_the_real_preset_is_the_cards_model_pinned(case, caplog):
    """`+experiment=lines_<family>` loads the released model at a commit (no unpinned warning) with the
    card's prompt."""
    cfg = to_config(compose_config(f"+experiment={case.experiment}"))
    assert cfg.model.family == case.family and cfg.model.source == case.source
    assert len(cfg.model.revision) == 40 and cfg.model.prompt == case.prompt
    with caplog.at_level("WARNING"):
        warn_unpinned(cfg.model)
    assert "unpinned" not in caplog.text
    with caplog.at_level("WARNING"):
        warn_unpinned(replace(cfg.model, revision="main"))
    assert "unpinned" in caplog.text


def test_the_paddleocr_vl_preset_is_full_fine_tuning():
    """As the fine-tuning study on UIT-HWDB lines trained it (conf/experiment/lines_paddleocr_vl.yaml)."""
    assert not to_config(compose_config("+experiment=lines_paddleocr_vl")).lora.enabled
    assert FAMILIES["paddleocr_vl"].full_fine_tuning


def test_the_demo_runs_end_to_end(run_cli, tmp_path, chat_family):
    run = FinishedRun(
        run_cli(
            *small_demo(),
            f"model={chat_family.case.tiny}",
            f"model.source={chat_family.cfg.source}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ),
        tmp_path / "run",
    ).check()
    for stage in ("base", "tuned"):
        metrics = run.json(f"eval/{stage}/metrics.json")
        assert metrics["n_samples"] == 4 and metrics["n_failed"] == 0, metrics
    assert (run.dir / "adapter" / "adapter_config.json").is_file()
    assert (run.dir / "gallery.html").is_file() or (run.dir / "eval" / "gallery.html").is_file()


@pytest.mark.slow
def test_the_benchmark_measures_full_fine_tuning(tmp_path):
    """bench.py --full-finetune, the lines_paddleocr_vl preset's adaptation (the GPU suite's
    `paddleocr_vl_full` phase): every weight outside the vision tower trains, as with lora=none."""
    from benchmarks import bench

    common = [
        *("--model", "tiny_paddleocr_vl", "--dtype", "fp32"),
        *("--device", "cpu", "--batch", "2", "--steps", "2"),
    ]
    result = bench.main(
        [*common, "--full-finetune", "--checkpoint-dir", str(tmp_path), "--json", str(tmp_path / "b.json")]
    )
    model = load_model(
        bench.model_config(bench.parse_args([*common, "--checkpoint-dir", str(tmp_path)])), HardwareConfig()
    )
    tower = family("paddleocr_vl").vision_tower(model)
    tower_ids = {id(p) for p in tower.parameters()}
    outside = sum(p.numel() for p in model.parameters() if id(p) not in tower_ids)  # parameters(): each once
    assert result["trainable_parameters"] == outside
    assert result["train"]["nonfinite_losses"] == 0

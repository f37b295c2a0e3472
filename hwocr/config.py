"""The config schema.

Hydra composes `conf/`; these dataclasses are registered as its schema, so a mistyped key or a
wrong type fails at composition (also under `--cfg job`) with a message naming the key. Each
entrypoint converts the composed config to these dataclasses once (`to_config` for hwocr.run,
`to_predict_config` for hwocr.predict); no other module sees a DictConfig. The two share the model,
hardware and inference (`eval.*`) sections and the functions that validate them, so whatever the
run refuses to load, predict refuses too.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from hwocr.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("base_eval", "train", "tuned_eval")


@dataclass(frozen=True)
class FamilyTraits:
    """What the config checks know of a model family (`model.family`); its code is in
    hwocr/model/families/. Settings a family lacks are refused with a ConfigError naming the key."""

    image_modes: tuple[str, ...]  # model.image_mode's choices; the first is the family's own
    # DeepSeek's keys (model.memory_optimizations, lora.experts) apply (ocr2) or are ignored (ocr1);
    # other families refuse model.memory_optimizations=true and ignore lora.experts (no routed experts)
    deepseek: bool = False
    deepseek_speedups: bool = False  # memory optimizations, expert LoRA, the fast evaluation path
    remote_code: bool = False  # runs the hub's code: needs model.trust_remote_code and a pinned revision
    full_fine_tuning: bool = True  # lora=none
    unsloth: bool = False  # backend=unsloth
    export: bool = False  # python -m hwocr.export


# model.family -> its traits. DeepSeek-OCR-2: dynamic (its official mode), base, small. v1: its five
# official modes. The chat-template families take the processor's own resolution rules (`native`).
FAMILIES = {
    "ocr2": FamilyTraits(
        ("dynamic", "base", "small"), deepseek=True, deepseek_speedups=True, unsloth=True, export=True
    ),
    "ocr1": FamilyTraits(
        ("tiny", "small", "base", "large", "gundam"),
        deepseek=True,
        remote_code=True,
        full_fine_tuning=False,
        unsloth=True,
    ),
    "paddleocr_vl": FamilyTraits(("native",)),
    "glm_ocr": FamilyTraits(("native",)),
}
# Older names still accepted, with a warning: (family, old name) -> the mode it means.
DEPRECATED_IMAGE_MODES = {("ocr2", "gundam"): "dynamic"}
BACKENDS = ("hf", "unsloth")
VISION_ADAPTATIONS = ("frozen", "encoder", "tower")
# hardware.dtype -> the torch dtype's name (hwocr.model.load.torch_dtype); no torch import here
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEFAULT_PROMPT = "<image>\nFree OCR."  # DeepSeek-OCR's plain transcription prompt


@dataclass
class ModelConfig:
    name: str = "tiny"
    # ocr2 = DeepSeek-OCR-2, ocr1 = DeepSeek-OCR v1 (remote code), paddleocr_vl (FAMILIES above)
    family: str = "ocr2"
    # Hub id or local directory. For `tiny`, the directory is built on first use.
    source: str = "???"
    revision: str | None = None
    trust_remote_code: bool = False
    build_tiny: bool = False
    # Native resolutions of the checkpoint: global view and local tile (both in pixels).
    image_size: int = 1024
    tile_size: int = 768
    # ocr2: dynamic = DeepSeek's own mode, a global view at image_size plus tile_size crops of wide
    # images; base = the global view alone; small = one view at tile_size (768 px).
    # ocr1: tiny 512, small 640, base 1024, large 1280 (one view each), gundam (global + tiles).
    # So `small` is one view in both families, but 768 px on DeepSeek-OCR-2 and 640 px on v1.
    # Chat-template families (paddleocr_vl): native = the processor's own resizing rules.
    image_mode: str = "base"
    prompt: str = DEFAULT_PROMPT
    # ocr2 only: hwocr's memory savings, each computing what the stock model computes
    # (tests/test_optimizations.py): routed experts packed as NF4 under 4-bit loading, SAM attention
    # without a materialised bias, the vision tower run in chunks of images, and the training loss
    # from logits at target positions only. They apply when the model is loaded, for evaluation and
    # hwocr.predict too, hence a model key. false = transformers' stock model (the benchmarks' baseline).
    memory_optimizations: bool = True


@dataclass
class LoraConfig:
    enabled: bool = True  # false = full fine-tuning (lora=none)
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    bias: str = "none"
    # A regex over module names. None = the language model's q/k/v/o/gate/up/down projections of
    # the chosen model family, plus the vision layers that `vision` names (hwocr/model/adapt.py).
    target_modules: str | None = None
    # What of the vision tower adapts, with LoRA or under full fine-tuning (lora=none):
    # frozen = nothing; encoder = DeepSeek-OCR-2's Qwen2-like encoder (v1: CLIP-L), as Unsloth's
    # finetune_vision_layers; tower = the encoder and SAM. Frozen by default: at the T4 profile the
    # encoder's LoRA about halves training speed and takes the batch past a T4's memory
    # (experiments/full_size_learning.md).
    vision: str = "frozen"
    # Whole modules trained beside the adapters and saved with them (PEFT's modules_to_save), e.g.
    # [lm_head]: the tiny random model's output head bounds its logits (demo preset).
    modules_to_save: list[str] | None = None
    # DeepSeek-OCR-2: also adapt the 64 routed experts of every MoE layer (fused 3-D weights, through
    # PEFT target_parameters; NF4-packed ones too). Ignored for v1, whose target_modules reach them.
    experts: bool = True


@dataclass
class SynthConfig:
    n_train_writers: int = 12
    n_test_writers: int = 4
    lines_per_writer: int = 16
    text_file: str | None = None  # one line of text per line; None = built-in generator
    # Word level only: 0 = each image shows a word of the text; N = one of the text's N most common
    # words, a closed task that a small model can learn in CPU minutes (the demo's).
    vocabulary: int = 0
    seed: int = 0


DATASET_KINDS = ("uit_hwdb", "synth", "manifest", "hf")


@dataclass
class DatasetConfig:
    name: str = "synth_line"
    # uit_hwdb: root holds train_data/ and test_data/ (one folder per writer with a label.json).
    # synth: generated into root, then read as uit_hwdb. manifest: root is a CSV or JSONL file, one row
    # per image. hf: root is a Hugging Face dataset: a save_to_disk folder, a folder of parquet files or
    # an imagefolder, a parquet file, or a hub id (docs/datasets.md).
    kind: str = "uit_hwdb"
    level: str = "line"  # line | word | paragraph
    root: str | None = None
    val_fraction: float = 0.1
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    writers: list[str] | None = None  # restrict train/val to these writer ids
    strict: bool = False
    synth: SynthConfig = field(default_factory=SynthConfig)
    # manifest and hf: the columns. A missing image or text column is an error; without the writer
    # column, held-out splits are seeded by sample instead of writer-disjoint.
    image_column: str = "image"
    text_column: str = "text"
    writer_column: str | None = "writer"
    split_column: str | None = "split"  # manifest only: the row's split; absent = every row is train
    # The split names (a manifest's split column, an hf dataset's splits) that feed each hwocr split.
    # Data without a test (validation) split: test_fraction (val_fraction) of train is held out.
    train_split: str = "train"
    test_split: str = "test"
    val_split: str = "validation"
    test_fraction: float = 0.1
    revision: str | None = None  # hf with a hub id: the dataset's commit, tag or branch
    # hf: where images stored inside the dataset (bytes) are written as files, named by content
    image_cache: str | None = None


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: str = "cpu"  # cpu | cuda
    num_devices: int = 1
    dtype: str = "fp32"
    load_in_4bit: bool = False
    per_device_batch: int = 2
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    dataloader_workers: int = 0
    # With several devices: a collective that waits longer than this fails the job instead of hanging.
    collective_timeout_s: int = 1800


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = -1  # -1 = use epochs
    lr: float = 2e-4
    scheduler: str = "linear"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 3407
    save_steps: int = 200
    eval_steps: int = 200
    logging_steps: int = 10
    resume: str = "auto"  # auto | never | PATH to a checkpoint dir


@dataclass
class RepetitionGuardConfig:
    """A windowed no-repeat n-gram guard while decoding (hwocr/evaluate/guard.py), the one DeepSeek's
    vLLM scripts use: ngram 20, window 90 (run_dpsk_ocr2_image.py), <td>/</td> never banned."""

    ngram: int = 20  # no n-gram of this many tokens repeats...; 0 = off
    window: int = 90  # ...within this many generated tokens (0 = the whole generation)
    whitelist: list[str] = field(default_factory=lambda: ["<td>", "</td>"])  # tokens never banned


@dataclass
class InferenceConfig:
    """How a checkpoint transcribes images: `eval.*` of both hwocr.run and hwocr.predict."""

    # An existing PEFT adapter (a run's adapter/ or a Trainer checkpoint-N dir). hwocr.run evaluates
    # it instead of training one; hwocr.predict transcribes with it.
    adapter: str | None = None
    batch_size: int = 0  # images per generation batch on each device; 0 = start large, halve on OOM
    # the same guard for base and tuned evaluation, and for hwocr.predict
    repetition_guard: RepetitionGuardConfig = field(default_factory=RepetitionGuardConfig)
    # GPU only: compile the vision tower's layers for evaluation (a one-off compile per view size,
    # then a faster prefill; benchmarks/README.md has both figures). false = eager, as in training
    compile_vision: bool = True
    # 16-bit bf16 weights on a GPU of compute capability 8.0+, backend=hf (elsewhere ignored: T4s,
    # 4-bit, Unsloth): each decoding step replayed as a CUDA graph (hwocr/evaluate/decode.py);
    # false = transformers' generate
    graph_decoding: bool = True
    # threads that encode (read images, run the processor on slices of) the next batch while the GPU
    # works (hwocr/evaluate/encoding.py). One could not keep up with the compiled tower and graphed
    # decoding; 8 slowed the GPU's host side (benchmarks/README.md)
    encode_threads: int = 4
    # tuned evaluation through the LoRA folded into the 16-bit weights (hwocr.model.merge_for_evaluation;
    # 4-bit models and backend=unsloth keep it apart). false = the adapter applied at every step
    merge_adapter: bool = True


@dataclass
class EvalConfig(InferenceConfig):
    """`eval.*` of hwocr.run: inference, plus what scoring against the references needs."""

    max_new_tokens_margin: int = 16  # new tokens allowed beyond the longest reference
    bootstrap_samples: int = 2000
    gallery_rows: int = 50  # samples per section of eval/gallery.html


@dataclass
class TrackingConfig:
    uri: str | None = None  # None = sqlite:///<abs outputs>/mlflow.db
    experiment: str = "hwocr"
    required: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    experiment: str = "default"
    # hf: transformers + PEFT. unsloth: Unsloth's FastVisionModel (GPU only, `pip install .[unsloth]`).
    backend: str = "hf"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    output_dir: str | None = None  # None = the Hydra job dir


@dataclass
class PredictConfig:
    """`python -m hwocr.predict`: the run's model, hardware and inference settings, and the images."""

    model: ModelConfig = field(default_factory=ModelConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    eval: InferenceConfig = field(default_factory=InferenceConfig)
    images: str = "???"  # a directory, one image, or comma-separated image paths
    output: str | None = None  # None = print "image<TAB>text"; a .csv path = write image,prediction,error
    max_new_tokens: int = 160  # no reference to size it from, unlike eval.max_new_tokens_margin


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """A nested config tree as one level of dotted keys: {"lora": {"r": 16}} -> {"lora.r": 16}."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# The config folder the entrypoints' @hydra.main read (config_path="../conf" beside this package).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(*overrides: str, config_name: str = "config"):
    """conf/<config_name>.yaml composed with `overrides` outside an entrypoint (tests, benchmarks).
    Call register_schema() first."""
    from hydra import compose, initialize_config_dir  # lazy, as in register_schema

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def model_option(option: str, source: Path | str) -> "ModelConfig":
    """conf/model/<option>.yaml as the schema's ModelConfig, its weights at `source`: what a run with
    `model=<option>` loads, so tests and benchmarks cannot drift from the configs."""
    register_schema()
    return to_config(compose_config(f"model={option}", f"model.source={source}")).model


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore  # lazy: benchmarks need no Hydra

    ConfigStore.instance().store(name="hwocr_schema", node=Config)
    ConfigStore.instance().store(name="hwocr_predict_schema", node=PredictConfig)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _check_at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")


def validate_model(model: ModelConfig) -> None:
    """model.*: the checks every entrypoint that loads a model makes (a deprecated mode is renamed)."""
    _check_choice("model.family", model.family, tuple(FAMILIES))
    traits = FAMILIES[model.family]
    renamed = DEPRECATED_IMAGE_MODES.get((model.family, model.image_mode))
    if renamed:
        log.warning(
            "model.image_mode=%s is deprecated for model.family=%s and will be refused in a later release; "
            "it means %s: set model.image_mode=%s",
            model.image_mode,
            model.family,
            renamed,
            renamed,
        )
        model.image_mode = renamed
    _check_choice("model.image_mode", model.image_mode, traits.image_modes)
    if model.memory_optimizations and not traits.deepseek:
        raise ConfigError(
            f"model.memory_optimizations=true is DeepSeek-OCR-2's (model.family=ocr2); model.family="
            f"{model.family} runs transformers' stock model: set model.memory_optimizations=false"
        )
    if traits.remote_code and not model.trust_remote_code:
        raise ConfigError(
            "model.family=ocr1 (DeepSeek-OCR v1) has no native transformers class and runs the hub's "
            "remote code; set model.trust_remote_code=true (with a pinned model.revision) to allow it"
        )
    if model.trust_remote_code and not model.revision and not is_local_dir(model.source):
        raise ConfigError(
            "model.trust_remote_code=true needs a pinned model.revision: it runs code from the hub, so "
            f"pin model.revision to the commit you reviewed (the hub's file history for "
            f"{model.source}), or set model.source to a local directory holding a reviewed download"
        )


def validate_hardware(hardware: HardwareConfig) -> None:
    """hardware.*: values a profile or an override can get wrong (the GPUs themselves: preflight.py)."""
    _check_choice("hardware.dtype", hardware.dtype, tuple(DTYPES))
    _check_choice("hardware.device", hardware.device, ("cpu", "cuda"))
    _check_at_least("hardware.num_devices", hardware.num_devices, 1)
    _check_at_least("hardware.per_device_batch", hardware.per_device_batch, 1)
    _check_at_least("hardware.grad_accum", hardware.grad_accum, 1)


def validate_inference(inference: InferenceConfig) -> None:
    """eval.*: the settings hwocr.run's evaluation and hwocr.predict share."""
    guard = inference.repetition_guard
    if guard.ngram < 0 or guard.window < 0 or (guard.window and guard.window < guard.ngram):
        raise ConfigError(
            f"eval.repetition_guard: ngram={guard.ngram}, window={guard.window}: both must be >= 0 and "
            "a window (0 = the whole generation) must hold at least one n-gram"
        )
    _check_at_least("eval.batch_size", inference.batch_size, 0)
    _check_at_least("eval.encode_threads", inference.encode_threads, 1)  # the thread that encodes


def validate_dataset(dataset: DatasetConfig) -> None:
    _check_choice("dataset.kind", dataset.kind, DATASET_KINDS)
    _check_choice("dataset.level", dataset.level, ("line", "word", "paragraph"))
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(dataset, key) < 1.0:
            raise ConfigError(f"dataset.{key}={getattr(dataset, key)} must be in [0, 1)")
    for key in ("max_train_samples", "max_eval_samples"):
        if getattr(dataset, key) is not None and getattr(dataset, key) < 1:
            raise ConfigError(f"dataset.{key}={getattr(dataset, key)} must be >= 1 (or null: no cap)")
    if dataset.synth.vocabulary < 0 or (dataset.synth.vocabulary and dataset.level != "word"):
        raise ConfigError(
            f"dataset.synth.vocabulary={dataset.synth.vocabulary} needs dataset.level=word (now "
            f"{dataset.level}) and a count >= 0"
        )
    if dataset.kind in ("manifest", "hf"):
        for key in ("image_column", "text_column", "train_split", "test_split", "val_split"):
            if not getattr(dataset, key):
                raise ConfigError(f"dataset.{key} is empty; dataset.kind={dataset.kind} needs it")
        splits = [dataset.train_split, dataset.test_split, dataset.val_split]
        if len(set(splits)) < 3:
            raise ConfigError(
                f"dataset.train_split, test_split and val_split must differ (got {', '.join(splits)})"
            )
    if dataset.kind == "hf" and not dataset.image_cache:
        raise ConfigError(
            "dataset.image_cache is not set: dataset.kind=hf writes images stored in the dataset to this "
            "folder (conf/dataset/hf.yaml sets it under $HWOCR_CACHE)"
        )


def validate(cfg: Config) -> Config:
    """Every check of `python -m hwocr.run`'s config beyond types; raises ConfigError naming the key."""
    validate_model(cfg.model)
    validate_hardware(cfg.hardware)
    validate_inference(cfg.eval)
    _check_choice("backend", cfg.backend, BACKENDS)
    validate_dataset(cfg.dataset)
    for stage in cfg.stages:
        _check_choice("stages[]", stage, STAGES)
    _check_choice("lora.vision", cfg.lora.vision, VISION_ADAPTATIONS)
    if cfg.lora.target_modules and cfg.lora.vision != "frozen":
        raise ConfigError(
            f"lora.target_modules={cfg.lora.target_modules!r} and lora.vision={cfg.lora.vision}: "
            "set one; a target regex names every adapted layer itself"
        )
    if cfg.hardware.load_in_4bit and not cfg.lora.enabled:
        raise ConfigError(
            "hardware.load_in_4bit=true needs LoRA: 4-bit weights cannot be fine-tuned directly"
        )
    traits = FAMILIES[cfg.model.family]
    if not traits.full_fine_tuning and not cfg.lora.enabled:
        raise ConfigError(
            f"model.family={cfg.model.family} trains LoRA adapters only; choose a lora other than none"
        )
    if cfg.backend == "unsloth" and not traits.unsloth:
        raise ConfigError(f"backend=unsloth does not load model.family={cfg.model.family}; use backend=hf")
    if experts_adapted(cfg) and cfg.lora.dropout:
        raise ConfigError(
            f"lora.dropout={cfg.lora.dropout} cannot apply to the routed experts (PEFT's ParamWrapper "
            "folds the LoRA into the expert weights, where dropout has no place); set lora.dropout=0 "
            "or lora.experts=false"
        )
    if cfg.backend == "unsloth" and not cfg.lora.enabled:
        raise ConfigError("backend=unsloth trains LoRA adapters here; use backend=hf for lora=none")
    if cfg.backend == "unsloth" and cfg.lora.modules_to_save:
        raise ConfigError("lora.modules_to_save is supported with backend=hf only")
    if cfg.backend == "unsloth" and cfg.hardware.device != "cuda":
        raise ConfigError(
            "backend=unsloth needs a CUDA GPU (Unsloth cannot run on CPU); use backend=hf here, or a "
            "GPU hardware profile such as hardware=t4"
        )
    if cfg.backend == "unsloth" and experts_adapted(cfg):
        raise ConfigError(
            "backend=unsloth does not adapt DeepSeek-OCR-2's routed experts (hwocr passes them to PEFT "
            "as target_parameters only on backend=hf); set lora.experts=false, or use backend=hf"
        )
    return cfg


def validate_predict(cfg: PredictConfig) -> PredictConfig:
    """`python -m hwocr.predict`'s config: the run's model, hardware and inference checks, and its own."""
    validate_model(cfg.model)
    validate_hardware(cfg.hardware)
    validate_inference(cfg.eval)
    _check_at_least("max_new_tokens", cfg.max_new_tokens, 1)
    return cfg


def experts_adapted(cfg: Config) -> bool:
    """LoRA reaches DeepSeek-OCR-2's fused routed experts (v1's are covered by target_modules; the
    other families have none)."""
    return cfg.lora.enabled and cfg.lora.experts and FAMILIES[cfg.model.family].deepseek_speedups


def is_local_dir(source: str) -> bool:
    """model.source names a local checkpoint directory (else a hub id)."""
    from pathlib import Path

    return Path(source).expanduser().is_dir()


def _reject_unknown_keys(node, schema: type, prefix: str = "") -> None:
    """`+key=value` bypasses Hydra's struct check, and merging into the schema drops such keys
    silently, so look for them explicitly."""
    from omegaconf import DictConfig, OmegaConf

    known = {f.name: f.type for f in fields(schema)}
    for key in node:
        if key not in known:
            raise ConfigError(f"unknown config key {prefix}{key} (known keys here: {', '.join(known)})")
        child = None if OmegaConf.is_interpolation(node, key) else node[key]
        if isinstance(child, DictConfig) and is_dataclass(known[key]):
            _reject_unknown_keys(child, known[key], f"{prefix}{key}.")


def _typed(cfg, schema: type):
    """The composed DictConfig as an instance of `schema`; unknown and unset keys are ConfigErrors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        _reject_unknown_keys(cfg, schema)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key} must be set (it has no default)") from None


def to_config(cfg) -> Config:
    """`python -m hwocr.run`'s composed config as the typed schema, validated."""
    return validate(_typed(cfg, Config))


def to_predict_config(cfg) -> PredictConfig:
    """`python -m hwocr.predict`'s composed config as the typed schema, validated."""
    return validate_predict(_typed(cfg, PredictConfig))

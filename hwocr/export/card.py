"""The model card: README.md in the hub's format (YAML front matter, then markdown), from the run's records.

Everything it states is read from the run: the base model from its config, the data counts from
data_report.json, the recipe from the adapter's own adapter_config.json and the run's config and
train_summary.json, the metrics from eval/{base,tuned}/metrics.json. The template is
model_card.md beside this module, rendered by huggingface_hub's ModelCard (Jinja).
"""

import json
import logging
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import cached_file

from hwocr import __version__
from hwocr.config import RepetitionGuardConfig
from hwocr.evaluate.guard import token_ids
from hwocr.export.source import ExportSource
from hwocr.inputs import image_mode_settings
from hwocr.io import read_json

log = logging.getLogger(__name__)

PIPELINE_TAG = "image-text-to-text"
TAGS = ["hwocr", "ocr", "handwriting", "deepseek-ocr-2", "lora"]
# (metrics.json key, the card's name, shown as a percentage)
METRICS = [
    ("cer", "CER (corpus)", True),
    ("mean_cer", "CER (mean per sample)", True),
    ("median_cer", "CER (median per sample)", True),
    ("wer", "WER (corpus)", True),
    ("perfect_match_rate", "perfect match", True),
    ("n_samples", "test samples", False),
    ("n_failed", "failed", False),
    ("n_repetition_guarded", "changed by the repetition guard", False),
]
# the metrics in the front matter's model-index (the hub shows them beside the card)
INDEXED_METRICS = {"cer": "CER", "mean_cer": "mean CER", "median_cer": "median CER", "wer": "WER"}
# deepseek-ai's own repository ships remote code; transformers' conversion of it loads natively
NATIVE_CONVERSION = "deepseek-community/DeepSeek-OCR-2"


class RunRecords:
    """The run's JSON records ({} where a file is absent: an export from an adapter alone)."""

    def __init__(self, run_dir: Path | None, adapter_dir: Path):
        def read(name: str) -> dict:
            return read_json(run_dir / name) if run_dir else {}

        self.data = read("data_report.json")
        self.train = read("train_summary.json")
        self.metrics = {stage: read(f"eval/{stage}/metrics.json") for stage in ("base", "tuned")}
        self.mlflow = read("mlflow_run.json")
        self.adapter = read_json(adapter_dir / "adapter_config.json")
        self.trainer_state = read_json(adapter_dir / "trainer_state.json")  # a checkpoint-N adapter

    def steps(self) -> int | None:
        """Optimizer steps behind the adapter: a checkpoint's own count, else the run's."""
        return self.trainer_state.get("global_step") or self.train.get("train/steps")


def base_license(source: ExportSource) -> str | None:
    """The license in the base model's own card (a local directory, or the hub's README in the cache
    or online), None where there is none to read."""
    try:
        path = cached_file(
            source.model.source,
            "README.md",
            revision=source.model.revision,
            _raise_exceptions_for_missing_entries=False,
        )
        return ModelCard.load(path).data.license if path else None
    except (OSError, ValueError) as error:  # offline without a cached card, or a card without YAML
        log.warning("the base model's license could not be read (%s); pass license=<id> to state it", error)
        return None


def template_values(source: ExportSource, records: RunRecords, settings: dict, processor) -> dict:
    """The card's facts. `settings`: the export's base_model, repo_id, license, max_new_tokens."""
    run = source.run_config
    model = source.model
    hub_id = settings["base_model"] or source.hub_id
    guard = run.eval.repetition_guard if run else RepetitionGuardConfig()
    whitelist = token_ids(processor.tokenizer, guard.whitelist)
    mode = image_mode_settings(model)
    license_id = settings["license"] or base_license(source)
    official = hub_id is not None and hub_id.startswith("deepseek-ai/")
    return {
        "title": settings["repo_id"]
        or f"{hub_id or model.name} + LoRA" + (f" ({run.dataset.name})" if run else ""),
        "base": {
            "hub_id": hub_id,
            "revision": model.revision if hub_id else None,
            "display": f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{model.name}`",
            "load_ref": NATIVE_CONVERSION if official else hub_id or model.source,
            "official": official,
        },
        "task": f"handwriting recognition ({run.dataset.level} images)" if run else "handwriting recognition",
        "dtype": source.dtype,
        "model": model,
        "prompt_literal": repr(model.prompt),
        "prompt_shown": json.dumps(model.prompt, ensure_ascii=False)[1:-1],
        "license_text": f"`{license_id}` (the base model's)"
        if license_id
        else "not stated by the base model",
        "dataset": run.dataset if run else None,
        "data_counts": _data_counts(records.data),
        "skipped_text": _skipped(records.data),
        "recipe": _recipe(source, records),
        "merged_from_4bit": source.trained_in_4bit,
        "n_test": (records.metrics["tuned"] or records.metrics["base"]).get("n_samples"),
        "metrics": _metric_rows(records.metrics),
        "tuned_metrics": records.metrics["tuned"],
        "guard_text": _guard_text(guard, bool(run)),
        "repo_id": settings["repo_id"],
        "model_ref": settings["repo_id"] or ".",
        "adapter_args": f'"{settings["repo_id"]}", subfolder="adapter"'
        if settings["repo_id"]
        else '"adapter"',
        "crop_to_patches": mode["crop_to_patches"],
        "squash_side": mode["size"]["height"] if model.image_mode == "small" else None,
        "ngram": guard.ngram,
        "window": guard.window,
        "whitelist_ids": list(whitelist),
        "whitelist_tokens": [
            f"`{t}`" for t in guard.whitelist if processor.tokenizer.convert_tokens_to_ids(t) in whitelist
        ],
        "max_new_tokens": settings["max_new_tokens"],
        "provenance": _provenance(source, records),
        "hwocr_version": __version__,
        "license_id": license_id,
    }


def render(values: dict, adapter_card: bool = False) -> str:
    """README.md of the merged model, or of its adapter/ (library PEFT)."""
    base = values["base"]
    card_data = ModelCardData(
        base_model=base["hub_id"],
        base_model_revision=base["revision"],
        base_model_relation="adapter" if adapter_card else "finetune",
        library_name="peft" if adapter_card else "transformers",
        license=values["license_id"],
        pipeline_tag=PIPELINE_TAG,
        tags=TAGS,
        model_name=values["title"],
        eval_results=_eval_results(values) or None,
    )
    if adapter_card and not values["repo_id"]:  # paths from adapter/, inside the export's folder
        values = {**values, "model_ref": "..", "adapter_args": '"."'}
    template = resources.files("hwocr.export").joinpath("model_card.md").read_text(encoding="utf-8")
    card = ModelCard.from_template(card_data, template_str=template, adapter_card=adapter_card, **values)
    return str(card)


def _data_counts(report: dict) -> list[dict]:
    summary = report.get("summary", {})
    rows = []
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        if f"n_{split}" in summary:
            rows.append(
                {
                    "split": name,
                    "samples": summary[f"n_{split}"],
                    "writers": summary.get(f"n_writers_{split}"),
                    "how": report.get("splits", {}).get(split),  # how the split was chosen
                }
            )
    return rows


def _skipped(report: dict) -> str:
    if not report:
        return "not recorded"
    skipped = report.get("skipped", [])
    if not skipped:
        return "none"
    reasons: dict[str, int] = {}
    for row in skipped:
        reasons[row.get("reason", "unknown")] = reasons.get(row.get("reason", "unknown"), 0) + 1
    return f"{len(skipped)} (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())) + ")"


def _recipe(source: ExportSource, records: RunRecords) -> list[tuple[str, str]]:
    adapter = records.adapter
    targets = adapter.get("target_modules")
    rows = [
        (
            "LoRA rank / alpha / dropout",
            f"{adapter.get('r')} / {adapter.get('lora_alpha')} / {adapter.get('lora_dropout')}",
        ),
        (
            "LoRA targets (modules)",
            f"`{targets}`" if isinstance(targets, str) else ", ".join(f"`{t}`" for t in targets or []),
        ),
        ("LoRA targets (routed experts' parameters)", _listed(adapter.get("target_parameters"))),
        ("trained whole (modules_to_save)", _listed(adapter.get("modules_to_save"))),
        ("steps", str(records.steps() or "not recorded")),
    ]
    run = source.run_config
    if run:
        hardware, train = run.hardware, run.train
        precision = hardware.dtype + (", base weights in 4-bit NF4 (QLoRA)" if hardware.load_in_4bit else "")
        batch = hardware.per_device_batch * hardware.grad_accum * hardware.num_devices
        rows += [
            ("vision tower", run.lora.vision),
            ("precision", precision),
            ("learning rate", f"{train.lr:g} ({train.scheduler}, warm-up {train.warmup_ratio:g})"),
            (
                "batch",
                f"{batch} ({hardware.per_device_batch} per device x {hardware.grad_accum} accumulated x {hardware.num_devices} devices)",
            ),
            ("backend", run.backend),
            ("seed", str(train.seed)),
        ]
    if "train/final_loss" in records.train:
        rows.append(("final training loss", f"{records.train['train/final_loss']:.4f}"))
    rows.append(("exported weights", f"{source.dtype}, LoRA merged"))
    return [(key, value.replace("|", "\\|")) for key, value in rows]  # a regex's | would end its cell


def _listed(values) -> str:
    return ", ".join(f"`{v}`" for v in values) if values else "none"


def _metric_rows(metrics: dict) -> list[dict]:
    rows = []
    for key, name, percent in METRICS:
        cells = {}
        for stage in ("base", "tuned"):
            value = metrics[stage].get(key)
            cells[stage] = "—" if value is None else f"{100 * value:.2f}%" if percent else str(value)
        if cells["base"] != "—" or cells["tuned"] != "—":
            rows.append({"name": name, **cells})
    return rows


def _eval_results(values: dict) -> list[EvalResult]:
    """The tuned metrics as the hub's model-index."""
    dataset = values["dataset"]
    tuned = values.get("tuned_metrics") or {}
    if dataset is None:
        return []
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            dataset_type=dataset.name,
            dataset_name=dataset.name,
            dataset_split="test",
            metric_type=key,
            metric_name=name,
            metric_value=tuned[key],
        )
        for key, name in INDEXED_METRICS.items()
        if key in tuned
    ]


def _guard_text(guard: RepetitionGuardConfig, from_run: bool) -> str:
    used = "used in the run's evaluations" if from_run else "hwocr.predict's default"
    if not guard.ngram:
        return f"off ({used})."
    window = f"the last {guard.window} generated tokens" if guard.window else "all generated tokens"
    never = ", ".join(f"`{t}`" for t in guard.whitelist) or "none"
    return f"no {guard.ngram}-gram repeats within {window}; never banned: {never} ({used})."


def _provenance(source: ExportSource, records: RunRecords) -> str:
    if source.run_dir is None:
        return f"the adapter `{source.adapter_dir.name}` (hwocr {__version__})"
    mlflow = f", MLflow run `{records.mlflow['run_id']}`" if records.mlflow.get("run_id") else ""
    adapter = (
        "" if source.adapter_dir == source.run_dir / "adapter" else f", adapter `{source.adapter_dir.name}`"
    )
    return f"the run `{source.run_dir.name}`{adapter}{mlflow} (hwocr {__version__})"

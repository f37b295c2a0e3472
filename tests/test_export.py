"""`python -m hwocr.export` on a small demo run: the merged folder runs in a process without hwocr and
transcribes as hwocr.predict does with the adapter; the adapter loads with plain PEFT; the card states
the run's own figures."""

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import built_once, run_hwocr
from huggingface_hub import ModelCard
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from hwocr.config import CONF_DIR, register_schema
from hwocr.errors import ConfigError
from hwocr.export import ExportConfig, export
from hwocr.export.card import METRICS
from hwocr.export.source import read_run_config
from hwocr.inputs.views import global_view_shift

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 24
# the demo's repetition guard (conf/experiment/demo.yaml), which the card's code must reproduce
GUARD = ("eval.repetition_guard.ngram=4", "eval.repetition_guard.window=0")
register_schema()


def hydra_main(module, *overrides: str) -> int:
    """A Hydra entrypoint's main() in this process (no second torch import); its exit code."""
    argv = sys.argv
    sys.argv = [module.__name__, "-cp", str(CONF_DIR), *overrides]
    try:
        module.main()
    except SystemExit as stop:
        return stop.code
    finally:
        sys.argv = argv
    return 0


def small_demo_run(folder: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HWOCR_CACHE", str(folder / "cache"))
        run_hwocr(
            folder / "run",
            "+experiment=demo",
            "train.max_steps=2",
            "dataset.max_train_samples=8",
            "dataset.max_eval_samples=3",
            "dataset.synth.lines_per_writer=2",
        ).check()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A demo run small enough for the fast tier: 2 steps, 3 test lines, base and tuned evaluation.
    Built once per session, whichever workers run this module's tests: they only read it."""
    return built_once(tmp_path_factory, "export_run", small_demo_run) / "run"


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory) -> Path:
    """demo_run exported (and logged to its MLflow run) once per session, like demo_run."""

    def export_demo_run(folder: Path) -> None:
        export(ExportConfig(run=str(demo_run), output=str(folder / "model"), max_new_tokens=MAX_NEW_TOKENS))

    return built_once(tmp_path_factory, "export", export_demo_run) / "model"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Lines whose sizes put the processor's padded global view one pixel off DeepSeek's (see
    hwocr/inputs/views.py), one tall, one square."""
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for i, (text, size) in enumerate(
        [
            ("Tôi yêu tiếng Việt", (157, 41)),
            ("học sinh đi học", (200, 40)),
            ("mưa", (90, 130)),
            ("xin chào", (120, 120)),
        ]
    ):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).text((5, size[1] // 2 - 10), text, fill="black")
        image.save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def card_code(folder: Path) -> str:
    """The card's transformers code block."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    [code] = re.findall(
        r"```python\n(.*?)```", text.split("## Use with transformers")[1].split("\n## ")[0], re.S
    )
    return code


def run_without_hwocr(script: str, cwd: Path, *args: str) -> str:
    """`script` in a fresh interpreter that must never import hwocr; its stdout."""
    guard = "\nimport sys\nassert 'hwocr' not in sys.modules, 'hwocr was imported'\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # hwocr not even importable
    result = subprocess.run(
        [sys.executable, "-c", script + guard, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def predict_with_adapter(demo_run: Path, images: list[Path], tmp_path: Path, *extra: str) -> dict[str, str]:
    import hwocr.predict

    output = tmp_path / "predictions.csv"
    code = hydra_main(
        hwocr.predict,
        f"model.source={demo_run.parent / 'cache' / 'tiny-deepseek-ocr2'}",
        f"eval.adapter={demo_run / 'adapter'}",
        f"images={images[0].parent}",
        f"max_new_tokens={MAX_NEW_TOKENS}",
        f"output={output}",
        *extra,
    )
    assert code == 0
    with open(output, encoding="utf-8") as handle:
        return {row["image"]: row["prediction"] for row in csv.DictReader(handle)}


def test_the_merged_weights_hold_every_part_of_the_adapter(demo_run, exported):
    """The LoRA on the projections and on the routed experts, and the output head trained whole,
    all changed the base's weights; nothing is quantised."""
    base = load_file(demo_run.parent / "cache" / "tiny-deepseek-ocr2" / "model.safetensors")
    merged = load_file(exported / "model.safetensors")
    assert merged.keys() == base.keys()
    changed = {key for key in base if not torch.equal(base[key], merged[key])}
    # saved in the checkpoint's layout (transformers converts on load): experts one by one
    assert "lm_head.weight" in changed
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert any(
            re.fullmatch(rf"model\.layers\.\d+\.mlp\.experts\.\d+\.{name}\.weight", k) for k in changed
        )
    assert any(".self_attn.q_proj" in key for key in changed)
    assert all(
        key.startswith(("model.layers.", "lm_head.")) for key in changed
    )  # the vision tower: as it was
    assert {t.dtype for t in merged.values()} == {torch.float32}  # the run's dtype


def card_namespace(folder: Path) -> dict:
    """The card's code run in this process (its command-line part not), loading the folder."""
    code = card_code(folder).replace('MODEL = "."', f"MODEL = {str(folder)!r}")
    namespace = {"__name__": "card"}
    exec(compile(code, "card", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("mode", ["base", "dynamic", "small"])
def test_the_card_s_code_builds_the_inputs_hwocr_builds(demo_run, exported, images, tmp_path, mode):
    """Token ids (one BOS, left padding), views, crops and their counts: hwocr's encode, exactly, in
    each image mode (the card is written for the mode of the model it exports)."""
    from hwocr.inputs import encode
    from hwocr.model import load_processor

    folder = exported
    model = read_run_config(demo_run).model
    if mode != model.image_mode:
        model = dataclasses.replace(model, image_mode=mode)
        folder = export(
            ExportConfig(run=str(demo_run), model=model, output=str(tmp_path / mode), tracking=False)
        )
    wide = tmp_path / "wide.png"
    Image.new("RGB", (420, 38), "white").save(wide)  # crops in the dynamic mode
    paths = [*images, wide]
    got = card_namespace(folder)["encode"]([str(p) for p in paths])
    pictures = [Image.open(p).convert("RGB") for p in paths]
    expected = encode(
        load_processor(model), pictures, [model.prompt] * len(paths), padding=True, return_tensors="pt"
    )
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    if mode == "dynamic":  # the wide line's crops make its prompt the longest: the others are padded, left
        assert got["pixel_values_local"].shape[0] > 0
        mask = got["attention_mask"]
        assert not mask[:, 0].all() and mask[:, -1].all()


# Run after the card's code, in the same fresh interpreter: the exported adapter/ onto the base with
# plain PEFT. A missing adapter key is an error, and the merge must give the exported weights.
PEFT_CHECK = """
import warnings
warnings.filterwarnings("error", message=".*missing adapter keys.*")
from peft import PeftModel

base = AutoModelForImageTextToText.from_pretrained(BASE)
merged = PeftModel.from_pretrained(base, "adapter").merge_and_unload().state_dict()
for key, value in model.state_dict().items():
    assert torch.allclose(merged[key], value.float(), atol=1e-6), key
print("peft: the adapter gives the exported weights")
"""


def test_the_cards_script_normalizes_text_as_hwocr_scores_it(exported):
    """Decoded text goes through the same normalisation in the card's script as in hwocr (a byte
    token can decode to a control character, which hwocr drops)."""
    import ast
    import unicodedata

    from hwocr.text import normalize_text

    tree = ast.parse(card_code(exported))
    (function,) = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "normalize"
    ]
    namespace = {"unicodedata": unicodedata}
    exec(compile(ast.Module([function], type_ignores=[]), "card", "exec"), namespace)
    for text in ("gigi dột\x7fậ", "Tie\u0302\u0301ng  Vi\u1ec7t\u200b\n", "\ufeffa\tb\x00 c ", "xin chào"):
        assert namespace["normalize"](text) == normalize_text(text), repr(text)


@pytest.mark.slow
def test_the_export_runs_without_hwocr_as_hwocr_runs_the_adapter(demo_run, images, tmp_path):
    """`python -m hwocr.export run=... output=...`; then, in a fresh interpreter that never imports
    hwocr, the card's transformers code transcribes the images as `python -m hwocr.predict
    eval.adapter=...` does (same guard), and the adapter/ loads with plain PEFT into the same weights."""
    assert any(global_view_shift(*Image.open(p).size, 128)[0] for p in images)  # the centring is exercised
    exported = tmp_path / "model"
    # tracking=false: the run's MLflow run keeps the module's export (test_the_export_is_logged_...)
    command = [
        "hwocr.export",
        f"run={demo_run}",
        f"output={exported}",
        f"max_new_tokens={MAX_NEW_TOKENS}",
        "tracking=false",
    ]
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"exported to {exported}" in result.stdout
    expected = predict_with_adapter(demo_run, images, tmp_path, *GUARD)
    base = demo_run.parent / "cache" / "tiny-deepseek-ocr2"
    script = card_code(exported) + f"\nBASE = {str(base)!r}\n" + PEFT_CHECK
    lines = run_without_hwocr(script, exported, *map(str, images)).splitlines()
    assert lines[-1] == "peft: the adapter gives the exported weights"
    got = dict(line.split("\t", 1) for line in lines[:-1])
    assert got == expected
    assert len(set(got.values())) > 1  # the images are told apart
    # the guard is reproduced, not idle: without it, hwocr transcribes otherwise
    assert predict_with_adapter(demo_run, images, tmp_path, "eval.repetition_guard.ngram=0") != expected


def test_hwocr_loads_the_exported_adapter_too(demo_run, exported):
    """Its LoRA keys are in the checkpoint's names (for PEFT); hwocr's loader takes them as well."""
    from transformers import AutoModelForImageTextToText

    from hwocr.config import HardwareConfig
    from hwocr.model import attach_adapter, load_model

    model = dataclasses.replace(read_run_config(demo_run).model, memory_optimizations=False)
    adapted = attach_adapter(load_model(model, HardwareConfig()), exported / "adapter")
    merged = adapted.merge_and_unload().state_dict()
    for key, value in AutoModelForImageTextToText.from_pretrained(exported).state_dict().items():
        assert torch.allclose(merged[key], value, atol=1e-6), key


def test_a_lora_on_the_vision_tower_is_merged_too(demo_run, tmp_path):
    """An adapter on SAM and the encoder (lora.vision=tower), exported alone with model=: the
    merged vision weights are the base's plus the LoRA's, as hwocr's own merge makes them."""
    from transformers import AutoModelForImageTextToText

    from hwocr.config import HardwareConfig, LoraConfig
    from hwocr.model import load_model, prepare_for_training

    model = dataclasses.replace(read_run_config(demo_run).model, memory_optimizations=False)
    hardware = HardwareConfig()
    adapted = prepare_for_training(load_model(model, hardware), LoraConfig(vision="tower"), hardware)
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapted.save_pretrained(tmp_path / "adapter")
    expected = adapted.merge_and_unload().state_dict()
    folder = export(
        ExportConfig(
            adapter=str(tmp_path / "adapter"), model=model, dtype="fp32", output=str(tmp_path / "out")
        )
    )
    merged = AutoModelForImageTextToText.from_pretrained(folder).state_dict()
    base = load_model(model, hardware).state_dict()
    vision = [key for key in merged if "vision_tower" in key and not torch.equal(merged[key], base[key])]
    assert any("sam_encoder" in key for key in vision) and any("vision_encoder" in key for key in vision)
    for key, value in merged.items():
        assert torch.allclose(value, expected[key], atol=1e-6), key


def test_deepseek_ocr_v1_is_refused_by_name(demo_run, tmp_path):
    from hwocr.config import ModelConfig

    v1 = ModelConfig(
        name="deepseek_ocr",
        family="ocr1",
        source="unsloth/DeepSeek-OCR",
        revision="0" * 40,
        trust_remote_code=True,
    )
    with pytest.raises(ConfigError, match="model.family=ocr1"):
        export(ExportConfig(adapter=str(demo_run / "adapter"), model=v1, output=str(tmp_path / "out")))


def test_the_card_states_the_runs_metrics_data_and_recipe(demo_run, exported):
    card = ModelCard.load(exported / "README.md")
    metrics = {
        stage: json.loads((demo_run / "eval" / stage / "metrics.json").read_text())
        for stage in ("base", "tuned")
    }
    # the hub's model-index: the tuned metrics, exactly
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        key: metrics["tuned"][key] for key in ("cer", "mean_cer", "median_cer", "wer")
    }
    table = {
        cells[0]: cells[1:]
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in card.text.splitlines()
            if line.startswith("| ")
        )
    }
    for key, name, percent in METRICS:
        shown = [
            f"{100 * metrics[s][key]:.2f}%" if percent else str(metrics[s][key]) for s in ("base", "tuned")
        ]
        assert table[name] == shown, name
    assert metrics["tuned"]["n_samples"] == 3 and "test split (3 samples)" in card.text
    report = json.loads((demo_run / "data_report.json").read_text())
    summary = report["summary"]
    assert f"**train:** {summary['n_train']} samples from {summary['n_writers_train']} writers" in card.text
    assert (
        f"**validation:** {summary['n_val']} samples from {summary['n_writers_val']} writers; {report['splits']['val']}"
        in card.text
    )
    assert table["steps"] == ["2"] and table["LoRA rank / alpha / dropout"] == ["16 / 16 / 0.0"]
    assert "`lm_head`" in table["trained whole (modules_to_save)"][0]
    assert "no 4-gram repeats within all generated tokens" in card.text
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert (
        "not tested here" in card.text and "vllm serve" in card.text and "sglang.launch_server" in card.text
    )


def test_the_adapter_card_replaces_peft_s_empty_template(demo_run, exported):
    assert (
        "[More Information Needed]" in (demo_run / "adapter" / "README.md").read_text()
    )  # PEFT's, at training
    card = ModelCard.load(exported / "adapter" / "README.md")
    assert card.data.library_name == "peft" and "[More Information Needed]" not in card.text
    assert "PeftModel.from_pretrained" in card.text
    assert not (exported / "adapter" / "training_args.bin").exists()  # a pickle stays behind


def test_the_export_is_logged_to_the_runs_mlflow_run(demo_run, exported):
    run_file = json.loads((demo_run / "mlflow_run.json").read_text())
    client = MlflowClient(run_file["uri"])
    assert {a.path for a in client.list_artifacts(run_file["run_id"], "export")} == {
        "export/README.md",
        "export/export.json",
    }
    assert client.get_run(run_file["run_id"]).data.tags["hwocr.export_dir"] == str(exported)


def test_a_hub_base_a_4bit_run_and_a_license_go_into_the_card(demo_run, tmp_path):
    """The card names the base by the hub id it was given (not the local path), and says that a run
    trained in 4-bit was merged into the base loaded unquantised."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("checkpoints", "plots", "mlflow_run.json"))
    config = run / "resolved_config.yaml"
    config.write_text(config.read_text().replace("load_in_4bit: false", "load_in_4bit: true"))
    folder = export(
        ExportConfig(
            run=str(run),
            output=str(tmp_path / "out"),
            base_model="someone/tiny-ocr2",
            license="apache-2.0",
            dtype="bf16",
        )
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "someone/tiny-ocr2" and card.data.license == "apache-2.0"
    assert "merged it into the base loaded\nunquantised in bf16: weights the adapter never saw" in card.text
    assert "base weights in 4-bit NF4 (QLoRA)" in card.text
    # transformers (5.25 on) keeps the MoE router's weight in fp32 whatever the load dtype; the export
    # keeps what the model class keeps.
    kept = _keep_in_fp32(folder)
    dtypes = {key: t.dtype for key, t in load_file(folder / "model.safetensors").items()}
    wrong = {
        key: dtype
        for key, dtype in dtypes.items()
        if dtype != (torch.float32 if kept(key) else torch.bfloat16)
    }
    assert not wrong, wrong
    assert any(dtype == torch.bfloat16 for dtype in dtypes.values())
    adapter_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "someone/tiny-ocr2"
    assert ModelCard.load(folder / "adapter" / "README.md").data.base_model == "someone/tiny-ocr2"


def test_the_command_line_composes_a_model_option_for_an_adapter_alone(demo_run, tmp_path):
    import hwocr.export.__main__ as cli

    code = hydra_main(
        cli,
        f"adapter={demo_run / 'adapter'}",
        "model=tiny",
        f"model.source={demo_run.parent / 'cache' / 'tiny-deepseek-ocr2'}",
        "dtype=fp32",
        f"output={tmp_path / 'out'}",
    )
    assert code == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Not recorded: exported from an adapter without its run." in card
    assert json.loads((tmp_path / "out" / "export.json").read_text())["run"] is None


def test_the_command_line_names_a_missing_output(demo_run, capsys):
    import hwocr.export.__main__ as cli

    assert hydra_main(cli, f"run={demo_run}") == 2
    assert "output is required" in capsys.readouterr().out


def test_a_store_that_cannot_take_the_export_is_a_warning(exported, monkeypatch, caplog):
    from hwocr.export.tracking import log_export

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level("WARNING", logger="hwocr.export.tracking"):
        assert log_export({"uri": "http://127.0.0.1:9", "run_id": "0" * 32}, exported) is False
    assert "the export was not logged to MLflow run" in caplog.text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "run=<run directory> or adapter="),
        ({"adapter": "ADAPTER"}, "name its base model with model="),
        ({"run": "EMPTY_RUN"}, "holds no PEFT adapter"),
        ({"run": "RUN", "output": "FULL"}, "exists and is not an empty directory"),
        ({"run": "RUN", "dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_bad_requests_are_config_errors_naming_the_key(demo_run, tmp_path, settings, message):
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    shutil.copy(demo_run / "resolved_config.yaml", empty_run)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    paths = {
        "ADAPTER": demo_run / "adapter",
        "EMPTY_RUN": empty_run,
        "RUN": demo_run,
        "FULL": tmp_path / "full",
    }
    values = {key: str(paths.get(value, value)) for key, value in settings.items()}
    values.setdefault("output", str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        export(ExportConfig(**values))
    assert not (tmp_path / "out").exists()


def test_a_run_saved_with_retired_config_keys_exports(demo_run, tmp_path, caplog):
    old_run = tmp_path / "old_run"
    shutil.copytree(demo_run, old_run)
    saved = old_run / "resolved_config.yaml"
    config = yaml.safe_load(saved.read_text(encoding="utf-8"))
    config["hardware"]["optimize"] = config["model"].pop("memory_optimizations")
    config["hardware"]["eval_batch"] = config["eval"].pop("batch_size")
    saved.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    # tracking=False: the copy names demo_run's MLflow run, which keeps the module's export
    with caplog.at_level("WARNING", logger="hwocr.saved_config"):
        folder = export(ExportConfig(run=str(old_run), output=str(tmp_path / "out"), tracking=False))
    assert json.loads((folder / "export.json").read_text())["run"] == str(old_run)
    assert "hardware.optimize is retired; read as model.memory_optimizations=" in caplog.text


def _keep_in_fp32(folder: Path):
    """Whether the exported model keeps a weight in fp32 (its classes' `_keep_in_fp32_modules*`,
    gathered from every submodel when transformers builds it)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    patterns = {
        *(getattr(model, "_keep_in_fp32_modules", None) or ()),
        *(getattr(model, "_keep_in_fp32_modules_strict", None) or ()),
    }
    return lambda key: any(f".{pattern}" in f".{key}" for pattern in patterns)

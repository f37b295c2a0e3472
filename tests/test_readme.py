"""The README's adapter snippet runs as written with plain transformers + PEFT (no hwocr), on an
adapter saved the way training saves one: LoRA on the language model, the routed experts through
target_parameters, and a module in modules_to_save."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hwocr.config import HardwareConfig, LoraConfig
from hwocr.model import load_model, load_processor
from hwocr.model.adapt import prepare_for_training

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow  # a second interpreter imports torch, transformers and PEFT


def readme_snippet() -> str:
    section = README.read_text(encoding="utf-8").split("## Using the adapter", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_loads_an_hwocr_adapter_with_plain_peft(tiny_model_config, tmp_path):
    hardware = HardwareConfig()
    model = prepare_for_training(
        load_model(tiny_model_config, hardware), LoraConfig(modules_to_save=["lm_head"]), hardware
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)  # as training saves it (Trainer.save_model on a PEFT model)
    load_processor(tiny_model_config).save_pretrained(adapter)
    Image.new("RGB", (320, 40), "white").save(tmp_path / "line.jpg")

    snippet = readme_snippet()
    assert "hwocr" not in snippet
    for hub, local in {  # the real checkpoint and a GPU -> the tiny model on the CPU
        '"deepseek-community/DeepSeek-OCR-2"': repr(tiny_model_config.source),
        '"outputs/runs/lines/<timestamp>/adapter"': repr(str(adapter)),
        '"line.jpg"': repr(str(tmp_path / "line.jpg")),
        'device_map="cuda"': 'device_map="cpu"',
        "torch.bfloat16": "torch.float32",
        "max_new_tokens=256": "max_new_tokens=4",
    }.items():
        assert hub in snippet, f"the README's snippet no longer has {hub}"
        snippet = snippet.replace(hub, local)
    loaded = "{type(m).__name__ for m in model.modules()}"
    check = f"\nassert {{'ParamWrapper', 'ModulesToSaveWrapper'}} <= {loaded}  # experts' LoRA, lm_head\n"
    result = subprocess.run(
        [sys.executable, "-c", snippet + check], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]

"""LoRA on DeepSeek-OCR-2's routed experts (lora.experts), on the tiny model on CPU: 16-bit experts
(PEFT's own ParamWrapper) and NF4-packed ones (hwocr/model/expert_lora.py)."""

import copy
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.lora import LoraLayer

from hwocr.config import HardwareConfig, LoraConfig, compose_config, register_schema, to_config
from hwocr.errors import ConfigError
from hwocr.evaluate.generate import GenerationSettings, max_new_tokens_for, transcribe
from hwocr.inputs import OcrCollator
from hwocr.model import attach_adapter, load_model, load_processor, merge_for_evaluation, prepare_for_training
from hwocr.model.adapt import expert_targets
from hwocr.model.expert_lora import PackedExpertsParamWrapper
from hwocr.model.experts import QuantizedExpertsMixin

PROMPT = "<image>\nFree OCR."
SIXTEEN_BIT = HardwareConfig()
PACKED = HardwareConfig(load_in_4bit=True)  # model.memory_optimizations (default): NF4-packed experts
PATHS = pytest.mark.parametrize("hardware", [SIXTEEN_BIT, PACKED], ids=["16-bit", "nf4-packed"])

register_schema()


@pytest.fixture(scope="module")
def samples(render_lines):
    return render_lines([(300, 60), (580, 60)])


@pytest.fixture(scope="module", autouse=True)
def _bitsandbytes():
    pytest.importorskip("bitsandbytes")


def moe_layers(model) -> list[int]:
    text_config = model.config.text_config
    return [i for i, kind in enumerate(text_config.mlp_layer_types) if kind == "sparse"]


def expert_lora_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and ".mlp.experts." in n}


def prepared(cfg, hardware, lora: LoraConfig):
    return prepare_for_training(load_model(cfg, hardware), lora, hardware)


@PATHS
def test_lora_r16_adapts_every_routed_expert_and_the_switch_turns_it_off(tiny_model_config, hardware):
    lora = to_config(compose_config("lora=r16")).lora
    assert lora.experts  # the preset's default
    model = prepared(tiny_model_config, hardware, lora)
    layers = moe_layers(model)
    names = expert_lora_names(model)
    for layer in layers:
        prefix = f"model.language_model.layers.{layer}.mlp.experts."
        # two nested ParamWrappers: down_proj outside, gate_up_proj inside (PEFT sorts the targets)
        assert {n.split(prefix, 1)[1] for n in names if prefix in n} == {
            "lora_A.default.weight",
            "lora_B.default.weight",
            "base_layer.lora_A.default.weight",
            "base_layer.lora_B.default.weight",
        }
    n_experts = model.config.text_config.n_routed_experts
    gate_up_a = model.get_parameter(
        f"base_model.model.model.language_model.layers.{layers[0]}.mlp.experts.base_layer.lora_A.default.weight"
    )
    assert gate_up_a.shape[0] == lora.r * n_experts  # a rank-r LoRA per expert
    if hardware.load_in_4bit:
        experts = [m for m in model.modules() if isinstance(m, QuantizedExpertsMixin)]
        assert len(experts) == len(layers)
        assert all("gate_up_proj" not in m._parameters for m in experts)  # no stand-in left behind
        assert any(isinstance(m, PackedExpertsParamWrapper) for m in model.modules())

    off = prepared(tiny_model_config, hardware, replace(lora, experts=False))
    assert not expert_lora_names(off)
    assert any("shared_experts" in n for n, p in off.named_parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "hardware",
    [SIXTEEN_BIT, PACKED, replace(PACKED, gradient_checkpointing=True)],
    ids=["16-bit", "nf4-packed", "nf4-packed-checkpointed"],
)
def test_gradients_reach_the_expert_lora(tiny_model_config, samples, hardware):
    model = prepared(tiny_model_config, hardware, LoraConfig())
    model.train()
    batch = OcrCollator(load_processor(tiny_model_config), PROMPT)(samples)
    model(**batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and ".mlp.experts." in n}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # lora_B starts at zero, so lora_A's first gradient is zero too; lora_B's must not be
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def _perturbed_lora(model, seed: int = 0):
    """Non-zero LoRA weights everywhere, as after training (lora_B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def _nf4_rounded_experts(model):
    """The 16-bit model with its routed-expert weights rounded to NF4 as the packing rounds them."""
    import bitsandbytes.functional as bnbf

    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "gate_up_proj", None), torch.nn.Parameter):
                for name in ("gate_up_proj", "down_proj"):
                    weight = getattr(module, name)
                    packed, state = bnbf.quantize_4bit(
                        weight.data.contiguous(), blocksize=64, compress_statistics=True, quant_type="nf4"
                    )
                    weight.copy_(bnbf.dequantize_4bit(packed, state))
    return model


def test_packed_expert_lora_computes_what_peft_computes_on_nf4_rounded_weights(
    tiny_model_config, samples, tmp_path
):
    """An adapter trained on packed experts is a plain PEFT adapter: loaded onto the 16-bit model
    (PEFT's own ParamWrapper) with NF4-rounded expert weights it gives the same logits."""
    base = load_model(tiny_model_config, SIXTEEN_BIT)
    reference = _nf4_rounded_experts(copy.deepcopy(base))
    from hwocr.model.experts import quantize_experts

    assert quantize_experts(base) > 0  # packed experts, nothing else quantized
    model = _perturbed_lora(prepare_for_training(base, LoraConfig(), SIXTEEN_BIT))
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_parameters"]) == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]

    native = attach_adapter(reference, tmp_path / "adapter")
    assert not any(isinstance(m, PackedExpertsParamWrapper) for m in native.modules())
    batch = OcrCollator(load_processor(tiny_model_config), PROMPT)(samples)
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        got, want = model(**batch).logits, native(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad(), native.disable_adapter():
        without = native(**batch).logits
    assert (without - want).abs().max() > 1e-2  # the experts' LoRA changes the output


def _train(model, processor, samples, steps=4, lr=2e-2):
    torch.manual_seed(0)
    batch = OcrCollator(processor, PROMPT)(samples)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


@pytest.mark.slow
@PATHS
def test_expert_adapter_round_trip_reproduces_batched_predictions(
    tiny_model_config, samples, tmp_path, hardware
):
    processor = load_processor(tiny_model_config)
    model = _train(prepared(tiny_model_config, hardware, LoraConfig()), processor, samples)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp.experts." in n}
    assert trained and any(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)
    settings = GenerationSettings(
        prompt=PROMPT,
        max_new_tokens=max_new_tokens_for([s.text for s in samples], processor.tokenizer, 4),
        batch_size=len(samples),
    )
    # before saving: bitsandbytes' CPU kernels give slightly different 4-bit outputs after a
    # state_dict() call (it unpacks its CPU weight layout), so the in-process model is read first
    before, _ = transcribe(model, processor, samples, settings)
    model.save_pretrained(tmp_path / "adapter")

    reloaded = attach_adapter(load_model(tiny_model_config, hardware), tmp_path / "adapter")
    after, _ = transcribe(reloaded, processor, samples, settings)
    assert [p.prediction for p in after] == [p.prediction for p in before]
    loaded = {n: p for n, p in reloaded.named_parameters() if ".mlp.experts." in n}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[n], trained[n]) for n in trained)

    # the Trainer's resume path: load_adapter into the already-wrapped training model
    fresh = prepared(tiny_model_config, hardware, LoraConfig())
    fresh.load_adapter(str(tmp_path / "adapter"), "default", is_trainable=True)
    resumed = {n: p for n, p in fresh.named_parameters() if ".mlp.experts." in n}
    assert all(torch.equal(resumed[n], trained[n]) for n in trained)
    assert all(p.requires_grad for n, p in resumed.items() if "lora_" in n)


def test_a_merged_lora_computes_what_the_unmerged_one_computes(tiny_model_config, samples):
    """Tuned evaluation folds the LoRA (experts included) into the 16-bit weights: same logits to
    fp32 rounding, same predictions, the adapter's own weights as trained."""
    processor = load_processor(tiny_model_config)
    model = _train(prepared(tiny_model_config, SIXTEEN_BIT, LoraConfig()), processor, samples).eval()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert any(".mlp.experts." in n and "lora_" in n for n in weights)
    batch = OcrCollator(processor, PROMPT)(samples)
    settings = GenerationSettings(prompt=PROMPT, max_new_tokens=12, batch_size=len(samples))
    with torch.no_grad():
        unmerged_logits = model(**batch).logits
    unmerged, _ = transcribe(model, processor, samples, settings)

    assert merge_for_evaluation(model)
    with torch.no_grad():
        merged_logits = model(**batch).logits
    merged, _ = transcribe(model, processor, samples, settings)
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-4, atol=1e-4)
    assert [p.prediction for p in merged] == [p.prediction for p in unmerged]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, weights[n])}
    # the adapted weights themselves now hold the LoRA, the experts' too; the adapter is as trained
    assert any(".mlp.experts.base_layer." in n for n in changed), sorted(changed)[:5]
    assert any("q_proj.base_layer." in n for n in changed)
    assert not any("lora_" in n for n in changed)
    assert all(m.merged for m in model.modules() if isinstance(m, LoraLayer))


def test_four_bit_models_and_plain_models_are_not_merged(tiny_model_config):
    packed = prepared(tiny_model_config, PACKED, LoraConfig())
    weights = {n: p.detach().clone() for n, p in packed.named_parameters()}
    assert not merge_for_evaluation(packed)
    assert all(torch.equal(p, weights[n]) for n, p in packed.named_parameters())
    assert not merge_for_evaluation(load_model(tiny_model_config, SIXTEEN_BIT))


def test_packed_expert_lora_refuses_to_merge(tiny_model_config):
    model = prepared(tiny_model_config, PACKED, LoraConfig())
    wrapper = next(m for m in model.modules() if isinstance(m, PackedExpertsParamWrapper))
    with pytest.raises(NotImplementedError, match="load_in_4bit=false"):
        wrapper.merge()


def test_v1_keeps_the_seed_module_list():
    v1 = SimpleNamespace(config=SimpleNamespace(model_type="deepseek_vl_v2"))
    v2 = SimpleNamespace(config=SimpleNamespace(model_type="deepseek_ocr2"))
    assert expert_targets(v1, LoraConfig(experts=True)) is None
    assert expert_targets(v2, LoraConfig(experts=False)) is None
    assert expert_targets(v2, LoraConfig(experts=True)) == [
        "mlp.experts.gate_up_proj",
        "mlp.experts.down_proj",
    ]


def test_expert_lora_config_conflicts_are_named():
    with pytest.raises(ConfigError, match="lora.dropout=0.1 cannot apply to the routed experts"):
        to_config(compose_config("lora.dropout=0.1"))
    assert to_config(compose_config("lora.dropout=0.1", "lora.experts=false")).lora.dropout == 0.1

"""Render the results table of benchmarks/README.md from benchmarks/results/*.json."""

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def timed_passes(result: dict) -> dict:
    """bench.py --compare's passes, in the order run (the record also holds their summary keys)."""
    passes = result.get("generate_passes", {})
    return {k: v for k, v in passes.items() if isinstance(v, dict) and "images_per_s" in v}


def rows(folder: Path = RESULTS) -> list[str]:
    out = [
        "| result | device | recipe | dtype | 4-bit | mode | expert LoRA | batch | weights GiB | peak GiB "
        "| samples/s | images/s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        if "settings" not in r:  # written by another script (ddp_check.py): not a bench.py row
            print(f"table.py: {path.name} is not a bench.py result; left out", file=sys.stderr)
            continue
        s, train, gen, lm = r["settings"], r.get("train", {}), r.get("generate", {}), r.get("loss_match")
        note = ""
        if train.get("steps", 0) >= 50:
            note = f"{train['nonfinite_losses']} non-finite losses in {train['steps']} steps"
        if lm:
            note = (
                f"loss rel. diff: target vs full logits {lm['same_weights_rel_diff']:.1e}, "
                f"optimized vs plain {lm['baseline_vs_optimized_rel_diff']:.1e}"
            )
        if gen.get("unbatched_identical"):
            note = f"batch-1 token ids identical {gen['unbatched_identical']}"
        if compared := gen.get("eager_vs_compiled_vision"):
            note = (note + "; " if note else "") + (
                f"tower eager {compared['eager']['images_per_s']}, compiled {compared['compiled_again']['images_per_s']}"
                f" images/s ({compared['compiled_first']['images_per_s']} in the pass that compiled)"
            )
        if timed := timed_passes(r):  # bench.py --compare: the same images, pass by pass
            passes = r["generate_passes"]
            first = next(iter(timed))
            note = (
                (note + "; " if note else "")
                + ", ".join(
                    f"{k} {v['images_per_s']}"
                    + (f" ({v[f'identical_to_{first}']} = {first})" if k != first else "")
                    for k, v in timed.items()
                )
                + f" images/s over {passes['images']}"
            )
            gen = {**gen, **timed[list(timed)[-1]], "images": passes["images"]}  # the last pass's figures
        if second := r.get("generate_second_pass"):
            note = (note + "; " if note else "") + (
                f"static cache, compile backend {s.get('gen_compile_backend')}: second pass {second['images_per_s']}"
            )
        if r.get("note_added_later"):  # a correction written into the record after the run
            note = (note + "; " if note else "") + "see the note in the file"
        if s.get("no_grad_ckpt"):
            note = (note + "; " if note else "") + "no grad. checkpointing"
        if s.get("no_repeat_ngram"):
            note = (note + "; " if note else "") + (
                f"repetition guard {s['no_repeat_ngram']}/{s['no_repeat_window']}: "
                f"changed {gen.get('repetition_guarded')} of {gen.get('images')}"
            )
        # DeepSeek-OCR-2 results from before lora.experts existed adapted no routed expert; v1's
        # experts are Linear modules that its LoRA targets always reached
        v1 = s.get("model") == "v1" or r["name"].startswith("v1_")  # *_run.json: written from a run
        with_lora = train or s.get("gen_lora")  # generate rows decode through a LoRA only with --gen-lora
        recipe = s["recipe"]
        # the chat-template families: no routed experts, each image read at its own resolution
        image_mode = "native" if s.get("model", "full").endswith(("paddleocr_vl", "glm_ocr")) else None
        if image_mode:
            recipe, with_lora = s["model"], False
        experts = "" if not with_lora else ("yes" if s.get("lora_experts") or v1 else "no")
        if r.get("conditions"):
            note = (note + "; " if note else "") + "another job shared the GPU: see the file"
        if s.get("model") == "v1":  # one recipe, its remote forward: model.memory_optimizations is ocr2-only
            recipe = f"v1, backend={s.get('backend', 'hf')}"
        out.append(
            f"| {r['name']} | {r['device'].replace('NVIDIA ', '')} | {recipe} | {s['dtype']} | "
            f"{'yes' if s['load_in_4bit'] else 'no'} | {image_mode or s.get('image_mode', 'base')} | {experts} | "
            f"{gen.get('batch_size', s['batch'])} | "
            f"{r.get('weights_gib_total', '')} | {train.get('peak_gib', gen.get('peak_gib', ''))} | "
            f"{train.get('samples_per_s', '')} | {gen.get('images_per_s', '')} | {note} |"
        )
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)))

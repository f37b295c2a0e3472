"""The generated sections of benchmarks/README.md, rendered from benchmarks/results/*.json.

Each section sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` in the README; nothing
between the markers is written by hand, and tests/test_benchmarks_readme.py fails when the README
and this script disagree.

    python benchmarks/readme_tables.py            # print every section
    python benchmarks/readme_tables.py --write    # rewrite the README's sections in place
    python benchmarks/readme_tables.py --check    # exit 1 when the README differs from the results

To put a new measurement in the summary, add or change a row of SUMMARY and run --write.
"""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import time_table  # benchmarks/ is on the path when this file runs
from table import timed_passes

HERE = Path(__file__).parent
README = HERE / "README.md"


@dataclass(frozen=True)
class Row:
    """One summary row: a result file and, for bench.py --compare records, the pass to read."""

    what: str
    result: str
    passes: tuple[str, ...] = ()  # --compare passes shown: the product's path, 2nd pass first
    plain: str | None = None  # a training record of the plain recipe, for comparison


@dataclass(frozen=True)
class Section:
    title: str
    hwocr: str  # the heading of hwocr's column
    plain: str  # the heading of the comparison's column
    rows: list[Row]


SUMMARY = [
    Section(
        "Training step on one GPU (peak GiB per GPU)",
        "hwocr",
        "plain recipe (`model.memory_optimizations=false`)",
        [
            Row(
                "`hardware=t4`/`t4x2`: fp16, 4-bit, crop mode, LoRA with experts, batch 16",
                "h200_t4_dynamic_b16",
            ),
            Row("the same, batch 8", "h200_t4_dynamic_b8"),
            Row("the same, batch 16, `lora.experts=false`", "h200_t4_dynamic_b16_noexperts"),
            Row(
                "fp16, 4-bit, `model.image_mode=base`, batch 8",
                "t4_train_optimized_b8",
                plain="t4_train_baseline_b8",
            ),
            Row("bf16, crop mode, batch 32, no expert LoRA (Trainer path)", "h200_run_bf16_gundam_b32_pad32"),
            Row(
                "bf16, base mode, batch 32, no expert LoRA",
                "h100_train_optimized_b32",
                plain="h100_train_baseline_b32",
            ),
            Row("v1 (`model=deepseek_ocr`), fp16, 4-bit, batch 8, `backend=hf`", "v1_t4settings_hf_b8"),
            Row("v1, the same, `backend=unsloth`", "v1_t4settings_unsloth_b8"),
        ],
    ),
    Section(
        "Evaluation on one GPU (bf16, 48 new tokens, automatic batch 256)",
        "hwocr: 1st / 2nd pass",
        "plain path: eager tower, `generate`, 1 encoding thread",
        [
            Row(
                "base mode",
                "h200_generate_eval_passes_base_auto",
                ("threads4_4", "threads4"),
            ),
            Row(
                "crop mode",
                "h200_generate_eval_passes_dynamic_auto",
                ("threads4_4", "threads4"),
            ),
            Row(
                "crop mode, LoRA with experts + repetition guard (tuned evaluation)",
                "h200_generate_eval_passes_dynamic_guard_lora",
                ("merged_5", "merged"),
            ),
        ],
    ),
]


def read(name: str) -> dict:
    return time_table.read(name)


def device(result: dict) -> str:
    return result["device"].replace("NVIDIA ", "").replace("1x ", "").replace(" 80GB HBM3", "")


def training_cells(row: Row) -> list[str]:
    r = read(row.result)
    train = r["train"]
    rate = f"{train['samples_per_s']} samples/s"
    if "run" in r:  # bench.py --task run: the product's Trainer path beside the bare step
        rate += f" (Trainer path {r['run']['samples_per_s']})"
    plain = ""
    if row.plain:
        p = read(row.plain)["train"]
        plain = f"{p['peak_gib']:.2f} GiB, {p['samples_per_s']} samples/s"
    if "generate" in r:  # v1's records time generation too
        rate += f"; generation {r['generate']['images_per_s']} images/s"
    return [device(r), str(r["settings"]["batch"]), f"{train['peak_gib']:.2f}", rate, plain]


def evaluation_cells(row: Row) -> list[str]:
    r = read(row.result)
    passes = timed_passes(r)
    shown = [passes[name] for name in row.passes]
    rate = " / ".join(str(p["images_per_s"]) for p in reversed(shown)) + " images/s"
    plain = next(iter(passes.values()))  # these records run the plain path first
    plain = f"{plain['images_per_s']} images/s"
    batch = shown[0]["batch_size"]
    return [device(r), str(batch), f"{shown[0]['peak_gib']:.2f}", rate, plain]


def summary() -> str:
    out = []
    for section in SUMMARY:
        out += [
            f"**{section.title}**",
            "",
            f"| what | result | device | batch | peak GiB | {section.hwocr} | {section.plain} |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in section.rows:
            cells = evaluation_cells(row) if row.passes else training_cells(row)
            out.append("| " + " | ".join([row.what, f"`{row.result}`", *cells]) + " |")
        out.append("")
    return "\n".join(out).rstrip("\n")


def loss_match() -> str:
    parts = []
    for name in ("full_lossmatch_bf16_b4", "full_lossmatch_fp16_4bit_b4"):
        lm = read(name)["loss_match"]
        parts.append(f"`{name}`: {lm['baseline_vs_optimized_rel_diff']:.1e}")
    identity = read("h200_generate_unbatched_identity_fp32")["generate"]["unbatched_identical"]
    return (
        "The optimised training loss against the plain recipe's on the same batch, relative difference: "
        + "; ".join(parts)
        + f". Batched against one-at-a-time generation in fp32, same token ids: {identity}"
        " (`h200_generate_unbatched_identity_fp32`)."
    )


# The product's evaluation path against an older checkout's (gpu_suite.sh evalspeedvs): record names
# without the checkout's suffix; the older one's record adds it.
VERSIONS = {"base mode": "h100_generate_product_base", "crop mode": "h100_generate_product_dynamic"}
OLDER = "fd2a139"


def versions() -> str:
    out = [
        f"| what | device | images | this version: 2nd / 3rd pass | `{OLDER}`: 2nd / 3rd pass | change |",
        "|---|---|---|---|---|---|",
    ]
    for what, name in VERSIONS.items():
        now, old = read(name), read(f"{name}_{OLDER}")
        rates = [[p["images_per_s"] for p in list(timed_passes(r).values())[1:]] for r in (now, old)]
        change = (sum(rates[0]) / sum(rates[1]) - 1) * 100
        cells = [" / ".join(map(str, r)) + " images/s" for r in rates]
        out.append(
            f"| {what} (`{name}`) | {device(now)} | {now['settings']['gen_images']} | {cells[0]} | {cells[1]} "
            f"| {change:+.1f}% |"
        )
    return "\n".join(out)


# PaddleOCR-VL and GLM-OCR at full size with random weights (gpu_suite.sh's phases of their names):
# training records, then generation records, per family.
FAMILIES = {
    "PaddleOCR-VL": [
        ("T4 settings: fp16, 4-bit, LoRA r16", "paddleocr_vl_t4_train_b8"),
        ("the same", "paddleocr_vl_t4_train_b16"),
        ("bf16, LoRA r16", "paddleocr_vl_bf16_train_b32"),
        ("generation, T4 settings", "paddleocr_vl_t4_generate_b32"),
        ("generation, bf16, automatic batch", "paddleocr_vl_bf16_generate"),
    ],
    "GLM-OCR": [
        ("T4 settings: fp16, LoRA r8 (`lines_glm_ocr`)", "glm_ocr_t4settings_train_fp16_b8"),
        ("the same", "glm_ocr_t4settings_train_fp16_b16"),
        ("the same, 4-bit", "glm_ocr_t4settings_train_fp16_4bit_b16"),
        ("bf16, LoRA r8", "glm_ocr_train_bf16_b32"),
        ("generation, T4 settings", "glm_ocr_t4settings_generate_fp16_b32"),
        ("generation, bf16, automatic batch", "glm_ocr_generate_bf16_auto"),
        ("the same with the repetition guard", "glm_ocr_generate_bf16_b256_guard"),
    ],
}


def families() -> str:
    out = ["| model | what | result | device | batch | peak GiB | rate |", "|---|---|---|---|---|---|---|"]
    identity = []  # batched against one-at-a-time generation, where a record checked it
    for family, rows in FAMILIES.items():
        for what, name in rows:
            r = read(name)
            if "generate" in r:
                measured, batch = r["generate"], r["generate"]["batch_size"]
                rate = f"{measured['images_per_s']} images/s"
                if "unbatched_identical" in measured:
                    identity.append(f"{family} {measured['unbatched_identical']} (`{name}`)")
            else:
                measured, batch = r["train"], r["settings"]["batch"]
                rate = f"{measured['samples_per_s']} samples/s"
            if r.get("conditions"):  # another job shared the GPU: its memory holds, its rate does not
                rate = "(GPU shared: memory only)"
            out.append(
                f"| {family} | {what} | `{name}` | {device(r)} | {batch} | {measured['peak_gib']:.2f} | {rate} |"
            )
    out += [
        "",
        "Batched against one-at-a-time generation in bf16, same token ids: " + "; ".join(identity) + ".",
    ]
    return "\n".join(out)


def sections() -> dict[str, str]:
    return {
        "summary": summary() + "\n\n" + loss_match(),
        "families": families(),
        "versions": versions(),
        "time-table": time_table.render(time_table.parser().parse_args([])),
    }


def fill(text: str, generated: dict[str, str]) -> str:
    """`text` with every marked section replaced by its generated content; an error names a missing marker."""
    for name, body in generated.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no '<!-- {name}:start -->' ... '<!-- {name}:end -->' section in the README")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite the README's generated sections")
    p.add_argument("--check", action="store_true", help="exit 1 when the README's sections are out of date")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args()
    generated = sections()
    if not (args.write or args.check):
        print("\n\n".join(f"<!-- {k} -->\n{v}" for k, v in generated.items()))
        return
    current = args.readme.read_text(encoding="utf-8")
    wanted = fill(current, generated)
    if args.write:
        args.readme.write_text(wanted, encoding="utf-8")
    elif wanted != current:
        print(
            f"{args.readme} is out of date with benchmarks/results: run python benchmarks/readme_tables.py --write",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The data-parallel path at T4 settings on one GPU: 2 worker processes against 1 process.

NCCL refuses two ranks on one device, so the 2-process run shares GPU 0 over gloo
(HWOCR_SHARE_ONE_GPU=1, hwocr/distributed.py); real multi-GPU runs keep NCCL. Both runs train the
full-size random-weight DeepSeek-OCR-2 (benchmarks/bench.py builds it) in fp16 with 4-bit weights
and gradient checkpointing, at the same effective batch (1 x 8 and 2 x 4), and evaluate the same
test lines. Checked: the losses per step, every test sample once and in order, one FINISHED MLflow
run per job.

    python benchmarks/ddp_check.py --json benchmarks/results/h200_ddp_one_gpu_t4settings.json
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import build_full_checkpoint, environment

COMMON = [
    "+experiment=lines",
    "hardware=t4",
    "dataset=synth_line",
    "dataset.synth.lines_per_writer=8",
    "dataset.max_eval_samples=24",
    "train.max_steps=6",
    "train.logging_steps=1",
    "train.save_steps=1000",
    "train.eval_steps=1000",
    "model.revision=null",
]


def run_job(name: str, out: Path, source: Path, extra: list[str], env: dict) -> dict:
    run_dir = out / name
    command = [
        sys.executable, "-m", "hwocr.run", *COMMON, f"model.source={source}",
        f"hydra.run.dir={run_dir}", f"tracking.uri=file://{out / 'mlruns'}", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-6000:])
        raise SystemExit(f"{name} failed with exit code {done.returncode}")
    state = sorted((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1]
    losses = [e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e]
    with open(run_dir / "eval" / "tuned" / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    mlflow_run = json.loads((run_dir / "mlflow_run.json").read_text())
    return {"seconds": round(seconds, 1), "losses": losses, "rows": rows, "mlflow_run": mlflow_run}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="/tmp/hwocr-ddp")
    parser.add_argument("--checkpoint-dir", default=os.environ.get("HWOCR_BENCH_DIR", "/tmp/hwocr-bench"))
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    source = build_full_checkpoint(Path(args.checkpoint_dir) / "full")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the jobs and this process read one file store
    env = {**os.environ, "HWOCR_CACHE": str(out / "cache")}
    one = run_job("one", out, source, ["hardware.per_device_batch=8"], env)
    two = run_job(
        "two", out, source, ["hardware.num_devices=2", "hardware.per_device_batch=4"],
        {**env, "HWOCR_SHARE_ONE_GPU": "1"},
    )  # fmt: skip
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file://{out / 'mlruns'}")
    status = {
        n: client.get_run(r["mlflow_run"]["run_id"]).info.status for n, r in (("one", one), ("two", two))
    }
    ids = {n: [row["id"] for row in r["rows"]] for n, r in (("one", one), ("two", two))}
    rel = [abs(a - b) / abs(a) for a, b in zip(one["losses"], two["losses"], strict=True)]
    same_text = sum(a["prediction"] == b["prediction"] for a, b in zip(one["rows"], two["rows"], strict=True))
    result = {
        "name": Path(args.json).stem,
        **environment(argparse.Namespace(device="cuda")),
        "losses_one_process": one["losses"],
        "losses_two_processes": two["losses"],
        "max_rel_loss_diff": max(rel),
        "test_ids_same_order": ids["one"] == ids["two"],
        "test_ids_unique": len(set(ids["two"])) == len(ids["two"]),
        "n_test": len(ids["two"]),
        "identical_predictions": f"{same_text}/{len(ids['two'])}",
        "mlflow_status": status,
        "seconds": {"one": one["seconds"], "two": two["seconds"]},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=2))


if __name__ == "__main__":
    main()

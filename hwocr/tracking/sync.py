"""Upload what a run kept locally while MLflow was unreachable: `python -m hwocr.sync RUN_DIR`.

When the tracking store cannot be reached (at start with `tracking.required=false`, or mid-run),
`hwocr.tracking.Tracker` appends every call it could not make to RUN_DIR/mlflow_pending/journal.jsonl
(one JSON object per line: start, params, metrics, tags, artifact, end) and the run goes on. This
module replays that journal into the store, into the run the job had started (same run id) or a new
one when it never reached the store. Replay is resumable: RUN_DIR/mlflow_pending/synced.json records
how many entries are done, so a sync interrupted halfway continues where it stopped and a repeated
sync uploads nothing twice.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hwocr.io import read_json, write_json

PENDING_DIR = "mlflow_pending"
JOURNAL = "journal.jsonl"
CURSOR = "synced.json"
RUN_FILE = "mlflow_run.json"  # the job's MLflow run id, so a rerun of the job continues that run
STEPS_FILE = "mlflow_steps.json"  # the newest step logged per metric (hwocr/tracking/client.py)

log = logging.getLogger(__name__)


def read_run_file(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / RUN_FILE)


def write_run_file(run_dir: Path, uri: str, run_id: str, experiment_id: str | None) -> None:
    write_json(Path(run_dir) / RUN_FILE, {"uri": uri, "run_id": run_id, "experiment_id": experiment_id})


class Journal:
    """Append-only JSON lines; a line cut short by a crash is ignored when read."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / PENDING_DIR
        self.path = self.dir / JOURNAL
        self.cursor_path = self.dir / CURSOR

    def append(self, op: str, **data) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"op": op, **data}, ensure_ascii=False, default=str)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                log.warning("ignoring a damaged journal line in %s", self.path)
                continue
            if isinstance(entry, dict) and "op" in entry:
                out.append(entry)
        return out

    def cursor(self) -> dict:
        return read_json(self.cursor_path) or {"done": 0, "run_id": None}

    def set_cursor(self, done: int, run_id: str | None) -> None:
        write_json(self.cursor_path, {"done": done, "run_id": run_id})

    def pending(self) -> int:
        return max(0, len(self.entries()) - int(self.cursor().get("done", 0)))


def sync_command(run_dir: Path) -> str:
    return f"python -m hwocr.sync {Path(run_dir).resolve()}"


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def _run_exists(client, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # MlflowException (not found) or a store of another URI
        return False


# The operations a run records, by journal entry name. The live Tracker applies each at once; when
# the store is down it journals the same entry instead, and replay() applies it later: one table,
# so the two paths cannot drift apart. mlflow's log_batch splits long lists into allowed batches.
def _log_params(client, run_id: str, entry: dict, run_dir: Path | None) -> None:
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params  # a continued run keeps its first values
    params = [Param(k, v) for k, v in entry["params"].items() if k not in existing]
    client.log_batch(run_id, params=params)


def _log_metrics(client, run_id: str, entry: dict, run_dir: Path | None) -> None:
    from mlflow.entities import Metric

    stamp, step = int(entry["timestamp"]), int(entry.get("step") or 0)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in entry["metrics"].items()])


def _set_tags(client, run_id: str, entry: dict, run_dir: Path | None) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])


def _log_artifact(client, run_id: str, entry: dict, run_dir: Path | None) -> None:
    moved = Path(run_dir) / entry["in_run_dir"] if run_dir and entry.get("in_run_dir") else None
    path = moved if moved is not None and moved.exists() else Path(entry["path"])
    if path.is_dir():
        client.log_artifacts(run_id, str(path), entry.get("artifact_path"))
    elif path.is_file():
        client.log_artifact(run_id, str(path), entry.get("artifact_path"))
    else:
        log.warning("artifact %s no longer exists; not uploaded", path)


def _end_run(client, run_id: str, entry: dict, run_dir: Path | None) -> None:
    client.set_terminated(run_id, status=entry.get("status", "FINISHED"))


OPERATIONS = {
    "params": _log_params,
    "metrics": _log_metrics,
    "tags": _set_tags,
    "artifact": _log_artifact,
    "end": _end_run,
}


def apply(client, run_id: str, op: str, entry: dict, run_dir: Path | None = None) -> None:
    OPERATIONS[op](client, run_id, entry, run_dir)


def replay(run_dir: Path, uri: str | None = None) -> str | None:
    """Replay the pending journal of `run_dir` into `uri` (default: the one the run used).
    Returns the run id, or None when there was nothing to upload."""
    from hwocr.tracking.store import open_client

    run_dir = Path(run_dir)
    journal = Journal(run_dir)
    entries = journal.entries()
    cursor = journal.cursor()
    done, run_id = int(cursor.get("done", 0)), cursor.get("run_id")
    if done >= len(entries):
        return run_id
    starts = [e for e in entries if e["op"] == "start"]
    first = starts[0] if starts else {}
    uri = uri or first.get("uri")
    if not uri:
        raise ValueError(f"{journal.path} names no tracking URI; pass --uri")
    client = open_client(uri)
    for index in range(done, len(entries)):
        entry = entries[index]
        op = entry["op"]
        if op == "start":
            if not _run_exists(client, run_id):
                run_id = entry.get("run_id") if _run_exists(client, entry.get("run_id")) else None
            if run_id is None:
                experiment_id = _experiment_id(client, entry.get("experiment") or "hwocr")
                tags = dict(entry.get("tags") or {})
                run_id = client.create_run(
                    experiment_id, run_name=entry.get("run_name"), tags=tags
                ).info.run_id
                write_run_file(run_dir, uri, run_id, experiment_id)
            else:
                client.update_run(run_id, status="RUNNING")
        elif run_id is None:
            raise ValueError(f"{journal.path}: entry {index} ({op}) comes before any start entry")
        elif op not in OPERATIONS:
            raise ValueError(f"{journal.path}: entry {index} has an unknown op {op!r}")
        else:
            apply(client, run_id, op, entry, run_dir)
        journal.set_cursor(index + 1, run_id)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hwocr.sync", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the job directory (holds mlflow_pending/)")
    parser.add_argument("--uri", help="tracking URI to upload to (default: the one the run used)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    journal = Journal(args.run_dir)
    if not journal.path.is_file():
        print(f"nothing to sync: {journal.path} does not exist", file=sys.stderr)
        return 1
    n = journal.pending()
    try:
        run_id = replay(args.run_dir, args.uri)
    except Exception as error:  # the store is still down, or the URI is wrong: say so, keep the journal
        print(f"sync failed, nothing lost (rerun it later): {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"synced {n} pending entr{'y' if n == 1 else 'ies'} into MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

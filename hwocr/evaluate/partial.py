"""Resumable evaluation: predictions are appended batch by batch to eval/<name>/predictions.partial.jsonl.

The file starts with a header line holding a key (evaluation name, generation settings, the test
sample ids and references, a fingerprint of the model weights). A rerun of the job reads every
`predictions.partial*.jsonl` of that evaluation whose key matches, and transcribes only the samples
not predicted yet (a sample that failed is tried again). A line cut short by a crash is ignored. Rank
0 writes predictions.partial.jsonl, other ranks predictions.partial.rank<N>.jsonl, so a rerun on a
different number of GPUs still reuses every prediction.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from hwocr.io import write_atomic
from hwocr.metrics import Prediction

log = logging.getLogger(__name__)

PARTIAL_GLOB = "predictions.partial*.jsonl"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap fingerprint of the weights (per tensor: name, shape, sum and norm; no copies)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.is_floating_point():  # 4-bit packed bytes: a norm needs floats; the sum is enough
                total, norm = float(param.detach().sum(dtype=torch.int64)), 0.0
            else:
                total = float(param.detach().sum(dtype=torch.float32)) if param.numel() else 0.0
                norm = (
                    float(torch.linalg.vector_norm(param.detach(), dtype=torch.float32))
                    if param.numel()
                    else 0.0
                )
            digest.update(f"{name}|{tuple(param.shape)}|{total:.6e}|{norm:.6e};".encode())
    return digest.hexdigest()[:16]


def eval_key(name: str, settings, samples, model: torch.nn.Module) -> str:
    payload = {
        "name": name,
        "settings": {k: v for k, v in sorted(vars(settings).items()) if k != "batch_size"},
        "samples": [[s.id, s.text] for s in samples],
        "weights": weights_fingerprint(model),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, default=str).encode()).hexdigest()[:24]


def _read(path: Path, key: str) -> dict[str, Prediction] | None:
    """The predictions of one partial file, or None when it belongs to another evaluation."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    try:
        if not lines or json.loads(lines[0]).get("key") != key:
            return None
    except (ValueError, AttributeError):
        return None
    out = {}
    for line in lines[1:]:
        try:
            pred = Prediction(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a line cut short by a crash
        out[pred.id] = pred
    return out


class PartialPredictions:
    def __init__(self, out_dir: Path, key: str, rank: int = 0):
        self.dir = Path(out_dir)
        self.key = key
        suffix = "" if rank == 0 else f".rank{rank}"
        self.path = self.dir / f"predictions.partial{suffix}.jsonl"
        self._ready = False

    def load(self) -> dict[str, Prediction]:
        """Every finished prediction of this evaluation (failed ones are left to be retried)."""
        done: dict[str, Prediction] = {}
        for path in sorted(self.dir.glob(PARTIAL_GLOB)) if self.dir.is_dir() else []:
            found = _read(path, self.key)
            if found is None:
                if path.exists():
                    log.info("ignoring %s: it belongs to another model, settings or test set", path.name)
                continue
            done.update({k: v for k, v in found.items() if not v.error})
        return done

    def _prepare(self) -> None:
        """Keep our file if it has our key (append to it); otherwise start it with a header."""
        if _read(self.path, self.key) is None:
            write_atomic(self.path, json.dumps({"key": self.key}) + "\n")
        else:
            with open(self.path, "rb+") as file:  # drop a last line cut short by a crash
                data = file.read()
                if data and not data.endswith(b"\n"):
                    file.truncate(data.rfind(b"\n") + 1)
        self._ready = True

    def append(self, batch: list[Prediction]) -> None:
        """The `on_batch` hook of transcribe(): one JSON line per prediction, flushed and fsynced."""
        if not self._ready:
            self._prepare()
        with open(self.path, "a", encoding="utf-8") as file:
            for pred in batch:
                file.write(json.dumps(asdict(pred), ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())

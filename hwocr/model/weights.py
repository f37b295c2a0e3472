"""Weights hwocr agrees to load: complete safetensors files, never pickles.

Unpickling an untrusted file can run code, and a save killed midway leaves a truncated file that
looks complete; both are refused here with the reason, before transformers or PEFT read a byte.
"""

import json
from pathlib import Path

from hwocr.errors import CheckpointError

SAFE_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_SAFETENSORS_HEADER = 100_000_000


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, or None. Reads only the header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            header_len = int.from_bytes(head, "little")
            if header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > size:
                return f"{path.name} is truncated (header runs past the end of the file)"
            header = json.loads(file.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        return f"{path.name} is unreadable: {error}"
    if 8 + header_len + end != size:
        return f"{path.name} is truncated ({size} bytes, its header describes {8 + header_len + end})"
    return None


def weights_problem(directory: Path) -> str | None:
    """Why the weights in `directory` cannot be loaded safely, or None."""
    directory = Path(directory)
    present = [name for name in SAFE_WEIGHTS if (directory / name).is_file()]
    if not present:
        pickled = [name for name in PICKLE_WEIGHTS if (directory / name).is_file()]
        if pickled:
            return (
                f"{directory} holds only pickled weights ({', '.join(pickled)}); hwocr loads safetensors "
                "only, because unpickling an untrusted file can run code. Convert it with "
                "`model.save_pretrained(DIR, safe_serialization=True)` in a trusted environment"
            )
        return f"{directory} has no weights ({' or '.join(SAFE_WEIGHTS[:2])})"
    files = []
    for name in present:
        if name.endswith(".index.json"):
            try:
                index = json.loads((directory / name).read_text(encoding="utf-8"))
                files += sorted({directory / shard for shard in index["weight_map"].values()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                return f"{directory / name} is unreadable: {error}"
        else:
            files.append(directory / name)
    for file in files:
        if not file.is_file():
            return f"{file} is missing"
        problem = safetensors_problem(file)
        if problem:
            return problem
    return None


def require_safetensors(directory: Path, what: str = "adapter") -> None:
    """Raise CheckpointError unless `directory` holds complete safetensors weights."""
    problem = weights_problem(Path(directory))
    if problem:
        raise CheckpointError(f"refusing to load the {what}: {problem}")

"""Files that a crash never leaves half-written, and JSON read back as {} when absent or damaged.

A write goes to a temporary sibling and is renamed over the target (os.replace), so a reader (MLflow,
a resumed run, a sweep comparison) sees the old file or the new one, never a truncated one.
"""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when the file is missing, unreadable, damaged or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_atomic(path: Path, text: str, durable: bool = False) -> Path:
    """Write UTF-8 text via a temporary file in the same directory and os.replace. `durable` also
    fsyncs the file and its directory, for files that must survive a power cut (checkpoint markers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as tmp:
            tmp.write(text)
            if durable:
                tmp.flush()
                os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_json(path: Path, data: dict, durable: bool = False) -> Path:
    return write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n", durable)


def fsync_tree(directory: Path) -> dict[str, int]:
    """fsync every file under `directory`; return their sizes by relative path."""
    sizes = {}
    for file in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
        sizes[file.relative_to(directory).as_posix()] = file.stat().st_size
    return sizes


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: str) -> bool:
    """Whether process `pid` still runs here (parallel sweep jobs may build the same cache dir)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` (never half-written)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if not _alive(stale.name.rpartition("-")[2]):  # left by a killed attempt, not a running one
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

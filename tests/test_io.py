"""hwocr.io: JSON read back as {} when absent or damaged; writes that are never half done."""

import os
import subprocess
import sys

import pytest

from hwocr.io import atomic_directory, read_json, write_atomic, write_json


def test_read_json_gives_an_empty_dict_for_what_is_not_a_json_object(tmp_path):
    write_json(tmp_path / "good.json", {"cer": 0.1, "text": "chữ"})
    (tmp_path / "cut.json").write_text('{"cer": 0.', encoding="utf-8")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    assert read_json(tmp_path / "good.json") == {"cer": 0.1, "text": "chữ"}
    assert read_json(tmp_path / "cut.json") == {}
    assert read_json(tmp_path / "list.json") == {}
    assert read_json(tmp_path / "missing.json") == {}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "sub" / "report.txt", "old")
    with pytest.raises(TypeError):  # fails mid-write, after the temporary file was made
        write_atomic(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["report.txt"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_atomic_directory_leaves_a_running_process_its_work_in_progress(tmp_path):
    target = tmp_path / "cache"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running = tmp_path / f".cache.tmp-{other.pid}"
        running.mkdir()
        dead = tmp_path / ".cache.tmp-999999999"
        dead.mkdir()
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("new")
        assert running.is_dir() and not dead.exists()
        assert (target / "weights").read_text() == "new"
        assert not (tmp_path / f".cache.tmp-{os.getpid()}").exists()
    finally:
        other.kill()
        other.wait()

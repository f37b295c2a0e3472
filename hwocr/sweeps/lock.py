"""One process per job dir: an flock on `<job dir>/.job.lock`, held for the whole attempt. The kernel
releases it when its process dies, even by SIGKILL, so a held lock means a live job (on this host, or
on any host of a filesystem with working flock, as NFSv4 has). Kept free of heavy imports: a probe
runs in the watchdog and the comparison too."""

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".job.lock"
LOG_EVERY_S = 60


@contextlib.contextmanager
def job_lock(job_dir: Path, holder: Callable[[], dict] = dict) -> Iterator[None]:
    """Hold the lock; while another process holds it, wait (saying every minute who, from `holder()`:
    the job's own record of its pid and host)."""
    path = Path(job_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        said = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if said is None or time.monotonic() - said >= LOG_EVERY_S:
                    record = holder()
                    log.warning(
                        "job dir %s is in use by pid %s on %s (an earlier submission still runs this job): "
                        "waiting for it to end, then going on from what it recorded",
                        job_dir,
                        record.get("pid", "?"),
                        record.get("host", "?"),
                    )
                    said = time.monotonic()
                time.sleep(1.0)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_running(job_dir: Path) -> bool:
    """True while some process holds the job dir's lock."""
    try:
        fd = os.open(Path(job_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)

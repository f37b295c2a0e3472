"""The sweep's watchdog: `python -m hwocr.sweeps.watchdog SWEEP_DIR PID`, started by the sweep callback
in its own session. It waits for the submitting process PID to exit. If that process ended without
ending the sweep (SIGKILL, an OOM kill: nothing of it can run then), the watchdog does what
on_multirun_end would have done to MLflow: it marks the parent run KILLED (tag sweep.interrupted) and
every job whose process is gone but whose record says RUNNING as INTERRUPTED, its run KILLED. Jobs
still running elsewhere (submitit jobs outlive their submitter) end their own runs. Resubmitting the
sweep reopens the parent (hwocr/sweeps/resume.py).
"""

import argparse
import contextlib
import logging
import os
import select
import sys
import time
from pathlib import Path

log = logging.getLogger("hwocr.sweeps.watchdog")

STORE_RETRY_S = 600  # the tracking server may be down when the submitter dies: retry this long
POLL_S = 2.0


def wait_for_exit(pid: int) -> None:
    """Block until process `pid` exits (pidfd on Linux; polling elsewhere)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(POLL_S)


def _this_submission(parent: dict, pid: int) -> dict | None:
    """The submission record of `pid`, if it is still the sweep's latest one."""
    submissions = parent.get("submissions") or []
    return submissions[-1] if submissions and submissions[-1].get("pid") == pid else None


def end_abandoned_sweep(sweep_dir: Path, pid: int, retry_s: float = STORE_RETRY_S) -> bool:
    """Mark the parent KILLED and dead RUNNING jobs INTERRUPTED; False when there is nothing to do
    (the sweep ended, or a newer submission took it over)."""
    from hwocr.sweeps.jobs import read_parent_file
    from hwocr.sweeps.resume import end_dead_jobs, mark_parent_ended, upload_journals

    deadline = time.monotonic() + retry_s
    while True:
        parent = read_parent_file(sweep_dir)
        submission = _this_submission(parent, pid)
        if submission is None or submission.get("ended"):
            return False
        try:
            upload_journals(sweep_dir)
            end_dead_jobs(sweep_dir, parent)
            # the submitter got as far as deciding the end (then MLflow failed it): that end
            status = submission.get("ending") or "KILLED"
            mark_parent_ended(
                sweep_dir,
                parent,
                status,
                reason=f"the submitting process (pid {pid}) died before the sweep ended",
            )
            return True
        except Exception as error:  # the store is down: try again for a while
            if time.monotonic() > deadline:
                log.error("could not mark the sweep's MLflow parent run KILLED: %s", error)
                return False
            log.warning("MLflow not reachable (%s); retrying", error)
            time.sleep(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hwocr.sweeps.watchdog", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("pid", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    import signal

    for signum in (signal.SIGINT, signal.SIGHUP):  # a terminal's Ctrl-C or hang-up is the submitter's
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_IGN)
    wait_for_exit(args.pid)
    if end_abandoned_sweep(args.sweep_dir.resolve(), args.pid):
        log.info("submitter %d died before the sweep ended: its parent run is ended", args.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())

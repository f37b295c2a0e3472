"""Hydra multirun sweeps in MLflow: the parent-run callback (callback.py) and its watchdog
(watchdog.py), how a job of `hwocr.run` starts and ends (job.py), the job side's helpers and the sweep
dir's files (jobs.py), resubmitted sweeps (resume.py, lock.py), and the comparison of a sweep's jobs
(compare.py)."""

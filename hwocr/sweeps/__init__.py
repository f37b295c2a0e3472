"""Hydra multirun sweeps in MLflow: the parent-run callback (callback.py), the job side and the sweep
dir's files (jobs.py), and the comparison of a sweep's jobs (compare.py)."""

"""Evaluation: batched generation (generate.py), resumable partial predictions (partial.py), and one
evaluation stage of a checkpoint on the test set with its reports (stage.py)."""

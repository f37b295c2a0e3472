"""Evaluation: batched generation (generate.py) on the reference path (reference.py) or the fast
path (fast/), resumable partial predictions (partial.py), and one evaluation stage of a checkpoint
on the test set with its reports (stage.py)."""

"""The estimated time left in the whole job, logged while training.

The Trainer's progress bar shows the time left in training; a user waiting for results also waits for
the tuned evaluation after it. The estimate is the measured time per step so far (validation passes
included) times the steps left, plus the tuned evaluation, taken to last as long as the base one did.
"""

import logging
import time

from transformers import TrainerCallback

log = logging.getLogger("hwocr")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TimeLeft(TrainerCallback):
    """Log the estimate after 5% of the steps, then every 10%."""

    def __init__(self, after_training_s: float | None):
        self.after_training_s = after_training_s  # None: nothing measured to estimate it from
        self.started = 0.0
        self.first_step = 0
        self.next_report = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step  # a resumed job starts later
        self.next_report = state.global_step + max(1, state.max_steps // 20)

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or state.global_step < self.next_report:
            return
        self.next_report = state.global_step + max(1, state.max_steps // 10)
        per_step = (time.monotonic() - self.started) / (state.global_step - self.first_step)
        training = per_step * (state.max_steps - state.global_step)
        if self.after_training_s is None:
            log.info(
                "step %d/%d at %.2f s/step: about %s of training left",
                state.global_step,
                state.max_steps,
                per_step,
                duration(training),
            )
            return
        log.info(
            "step %d/%d at %.2f s/step: about %s left in this job (%s of training, then the tuned "
            "evaluation, taken to last as long as the base one: %s)",
            state.global_step,
            state.max_steps,
            per_step,
            duration(training + self.after_training_s),
            duration(training),
            duration(self.after_training_s),
        )

"""Library-version shims: where hwocr bridges library versions, and the only place it uses a
library's private API.

Each function here stands in for something the library offers no public way to do (or offers only
from a later version on) and that hwocr keeps for the speed or correctness it buys. Every private
name used below is checked against the installed versions by tests/test_compat.py, which fails
naming the library and its version when one moves, so an upgrade breaks a test rather than quietly
changing behaviour. At run time a missing private API is a warning and the library's default, never
a failure of the run.
"""

import contextlib
import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


# --- torch: the caching host allocator ---------------------------------------------------------------


def set_allocator_settings(settings: str) -> bool:
    """Apply `settings` (PYTORCH_ALLOC_CONF syntax) to the running process's allocators.

    torch reads PYTORCH_ALLOC_CONF once, before hwocr runs, and has no public setter: torch 2.13
    binds one privately, 2.11 wraps a private one in torch.cuda.memory. Returns whether applied."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch 2.13
    if setter is None:
        setter = getattr(torch.cuda.memory, "_set_allocator_settings", None)  # torch 2.11
    if setter is None:
        log.warning("torch %s has no allocator settings setter; %r not applied", torch.__version__, settings)
        return False
    try:
        setter(settings)
    except RuntimeError as error:  # a build that does not know a key: torch's defaults stand
        log.warning("torch %s refused allocator settings %r (%s)", torch.__version__, settings, error)
        return False
    return True


def empty_host_cache() -> None:
    """Release the caching host allocator's free page-locked blocks (public from torch 2.13 on)."""
    public = getattr(torch.accelerator, "empty_host_cache", None)
    if public is not None:
        public()
    elif hasattr(torch._C, "_host_emptyCache"):  # torch 2.11: only the private binding (CUDA builds)
        torch._C._host_emptyCache()
    else:
        log.warning("torch %s cannot release page-locked host memory; it stays cached", torch.__version__)


# --- torch: the compiler ----------------------------------------------------------------------------


@contextlib.contextmanager
def compile_errors_run_eagerly():
    """For the duration, code torch.compile cannot compile (no Triton for this GPU, no C compiler)
    runs eagerly with a warning instead of raising: dynamo's `suppress_errors` switch."""
    config = torch._dynamo.config
    suppress = config.suppress_errors
    config.suppress_errors = True
    try:
        yield
    finally:
        config.suppress_errors = suppress


# --- Hydra: the basic sweeper's grid -----------------------------------------------------------------


def _basic_sweeper():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def is_basic_sweeper_target(target: str) -> bool:
    """Whether a sweeper config's `_target_` is Hydra's basic sweeper."""
    sweeper = _basic_sweeper()
    return target == f"{sweeper.__module__}.{sweeper.__qualname__}"


def basic_sweeper_jobs(overrides: list) -> list[list[str]]:
    """Every job's overrides (parsed `Override`s in), in the order and numbering Hydra's basic
    sweeper gives its jobs: the sweeper's own expansion, so resumption can never disagree with it."""
    return [list(job) for batch in _basic_sweeper().split_arguments(overrides, None) for job in batch]


def failed_job_error(job_return) -> BaseException:
    """The exception a failed job raised. JobReturn's public `return_value` raises it, after
    writing a line of its own to stderr; this reads the field behind it."""
    return job_return._return_value


# --- transformers: activation checkpointing --------------------------------------------------------


def enable_activation_checkpointing(model: "PreTrainedModel", checkpoint_kwargs: dict) -> None:
    """Turn on activation (gradient) checkpointing under either of transformers' names for it.

    Newer releases call it `activation_checkpointing_enable` and warn that the older
    `gradient_checkpointing_enable` goes in v6; the oldest releases hwocr supports have only the
    older name. Both are public; this picks the one the installed version offers."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)

"""hwocr/compat.py's private library APIs are still where it reaches for them, in the versions
installed; a failure names the library version whose move it is. And no private API is used
anywhere else in hwocr."""

import re
import warnings
from pathlib import Path

import hydra
import torch

from hwocr import compat
from hwocr.evaluate.fast.encoding import REGISTERED_PAGE_LOCKING

PACKAGE = Path(__file__).resolve().parents[1] / "hwocr"
TORCH = f"torch {torch.__version__}"
HYDRA = f"hydra-core {hydra.__version__}"


def test_the_allocator_settings_setter_takes_hwocrs_page_locking_settings(caplog):
    assert hasattr(torch._C, "_accelerator_setAllocatorSettings") or hasattr(
        torch.cuda.memory, "_set_allocator_settings"
    ), f"{TORCH} has moved its allocator settings setter: update compat.set_allocator_settings"
    assert compat.set_allocator_settings(REGISTERED_PAGE_LOCKING), (
        f"{TORCH} refused {REGISTERED_PAGE_LOCKING!r}: {caplog.text}"
    )


def test_the_host_cache_can_be_emptied():
    assert hasattr(torch.accelerator, "empty_host_cache") or hasattr(torch._C, "_host_emptyCache"), (
        f"{TORCH} has neither torch.accelerator.empty_host_cache nor torch._C._host_emptyCache: "
        "update compat.empty_host_cache"
    )


def test_compile_errors_can_be_made_to_run_eagerly():
    config = torch._dynamo.config
    assert isinstance(getattr(config, "suppress_errors", None), bool), (
        f"{TORCH} has no torch._dynamo.config.suppress_errors: update compat.compile_errors_run_eagerly"
    )
    before = config.suppress_errors
    with compat.compile_errors_run_eagerly():
        assert config.suppress_errors is True
    assert config.suppress_errors == before


def test_the_basic_sweeper_is_recognised_from_hydras_own_config(tmp_path):
    from hydra import compose, initialize_config_dir

    (tmp_path / "empty.yaml").write_text("{}\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("empty", overrides=["hydra/sweeper=basic"], return_hydra_config=True)
    target = cfg.hydra.sweeper._target_
    assert compat.is_basic_sweeper_target(target), f"{HYDRA}'s basic sweeper is {target}: update compat"
    assert not compat.is_basic_sweeper_target(
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    )


def test_the_basic_sweepers_grid_comes_from_the_sweeper():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "c=3,4"])
    assert compat.basic_sweeper_jobs(parsed) == [
        ["a=1", "b=x", "c=3"],
        ["a=1", "b=x", "c=4"],
        ["a=2", "b=x", "c=3"],
        ["a=2", "b=x", "c=4"],
    ], f"{HYDRA}'s BasicSweeper.split_arguments changed"


def test_a_failed_jobs_error_is_read_without_raising_it():
    from hydra.core.utils import JobReturn, JobStatus

    error = ValueError("bad value")
    job = JobReturn(status=JobStatus.FAILED)
    job.return_value = error
    assert compat.failed_job_error(job) is error, f"{HYDRA}'s JobReturn keeps a failure elsewhere"


PRIVATE = re.compile(
    r"torch\._C\b|torch\._dynamo|\._optimize_model_for_decode|hydra\._internal|_terminate_process_handler"
    r"|cumulative_length|_return_value|\._parameters\b"
)


def test_private_apis_are_used_only_in_the_compatibility_module():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "compat.py" or path.parent != PACKAGE
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert found == []


def test_activation_checkpointing_turns_on_under_the_installed_transformers_own_name():
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the older name warns where a newer one exists
        compat.enable_activation_checkpointing(model, {"use_reentrant": False})
    checkpointed = [layer.gradient_checkpointing for layer in model.model.layers]
    assert checkpointed == [True, True], f"transformers {transformers.__version__}: {checkpointed}"

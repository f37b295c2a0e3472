"""A run's saved resolved_config.yaml written with keys the schema has since retired still reads: each
retired key lands on its new home with a warning naming both, and one with no new home is refused by name."""

import re

import pytest
import yaml
from omegaconf import OmegaConf

from hwocr.config import compose_config, register_schema
from hwocr.errors import ConfigError
from hwocr.saved_config import read_saved_config

register_schema()


def saved(tmp_path, change) -> object:
    """The demo's resolved config as a run saves it, after `change(config_dict)`; its path."""
    config = OmegaConf.to_container(compose_config("+experiment=demo"), resolve=True)
    change(config)
    path = tmp_path / "resolved_config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def old_shape(config: dict) -> None:
    """The schema before the evaluation batch moved to eval.* and the memory switch to model.*."""
    config["eval"]["batch_size"] = 0  # then: 0 = use hardware.eval_batch
    config["hardware"]["eval_batch"] = 16
    config["hardware"]["optimize"] = False
    del config["model"]["memory_optimizations"]


def test_an_old_run_s_config_reads_with_its_values_under_the_new_keys(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="hwocr.saved_config"):
        cfg = read_saved_config(saved(tmp_path, old_shape))
    assert cfg.eval.batch_size == 16
    assert cfg.model.memory_optimizations is False
    assert cfg.experiment == "demo"  # the rest as saved
    for old, new in [
        ("hardware.eval_batch", "eval.batch_size"),
        ("hardware.optimize", "model.memory_optimizations"),
    ]:
        assert re.search(rf"{re.escape(old)} is retired; read as {re.escape(new)}=", caplog.text), caplog.text


def test_a_batch_size_saved_beside_the_old_key_keeps_the_precedence_it_had(tmp_path):
    def both(config):
        old_shape(config)
        config["eval"]["batch_size"] = 4  # then: overrides hardware.eval_batch

    assert read_saved_config(saved(tmp_path, both)).eval.batch_size == 4


def test_the_old_no_repeat_rule_becomes_a_guard_over_the_whole_generation(tmp_path):
    def old_guard(config):
        del config["eval"]["repetition_guard"]
        config["eval"]["no_repeat_ngram_size"] = 3

    guard = read_saved_config(saved(tmp_path, old_guard)).eval.repetition_guard
    assert (guard.ngram, guard.window, guard.whitelist) == (3, 0, [])


def test_a_retired_key_with_no_new_home_is_refused_by_name(tmp_path):
    def with_workers(config):
        config["eval"]["encode_workers"] = 2

    path = saved(tmp_path, with_workers)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: eval.encode_workers is retired"):
        read_saved_config(path)


def test_a_key_that_never_existed_is_still_unknown(tmp_path):
    def typo(config):
        config["hardware"]["eval_bacth"] = 16

    with pytest.raises(ConfigError, match="unknown config key hardware.eval_bacth"):
        read_saved_config(saved(tmp_path, typo))

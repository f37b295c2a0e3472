"""A config that hwocr saved with a run (its resolved_config.yaml), read with today's schema.

Runs outlive the schema they were written with. Keys the schema has retired are moved here, and only
here, to the keys that replaced them, each with a warning naming both; a retired key that nothing
replaced is a ConfigError naming it. The result then goes through the run's own checks (`to_config`),
so a saved config is held to the same rules as a new one.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from hwocr.config import Config, to_config
from hwocr.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Renamed:
    old: str
    new: str
    # Further keys the new home needs set so that it means what the old key meant.
    implies: dict[str, object] = field(default_factory=dict)
    # The new key's value when it was saved beside the old one and meant "use the old key".
    defers_at: object = None


RENAMED = (
    # eval.batch_size existed beside it and, when 0, meant "use hardware.eval_batch".
    Renamed("hardware.eval_batch", "eval.batch_size", defers_at=0),
    Renamed("hardware.optimize", "model.memory_optimizations"),
    # transformers' no-repeat n-gram rule: over the whole generation, no tokens exempt.
    Renamed(
        "eval.no_repeat_ngram_size",
        "eval.repetition_guard.ngram",
        implies={"eval.repetition_guard.window": 0, "eval.repetition_guard.whitelist": []},
    ),
)
# Retired keys with no new home: why not, and what to do instead.
REMOVED = {
    "eval.encode_workers": (
        "encoding worker processes were replaced by threads (eval.encode_threads); delete the key, or set "
        "eval.encode_threads in its place"
    ),
}


def read_saved_config(path: Path) -> Config:
    """The run config saved at `path`, retired keys moved to their new homes, validated as a new one."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.load(path)
        upgrade(node, path)
        return to_config(node)
    except (ConfigError, OmegaConfBaseException) as error:
        raise ConfigError(f"{path}: {error}") from error


def upgrade(node, source: Path | str) -> None:
    """Move the retired keys of the saved config `node` (a DictConfig) to their new homes, in place."""
    from omegaconf import OmegaConf

    for key, reason in REMOVED.items():
        if _has(node, key):
            raise ConfigError(f"{key} is retired with no replacement: {reason}")
    for rename in RENAMED:
        if not _has(node, rename.old):
            continue
        value = OmegaConf.select(node, rename.old)
        _delete(node, rename.old)
        saved_new = OmegaConf.select(node, rename.new, default=rename.defers_at)
        if _has(node, rename.new) and saved_new != rename.defers_at:
            log.warning(
                "%s: %s is retired; %s=%s, saved beside it, took precedence over it then and does now",
                source,
                rename.old,
                rename.new,
                saved_new,
            )
            continue
        log.warning(
            "%s: %s is retired; read as %s=%s (the key to use from now on)",
            source,
            rename.old,
            rename.new,
            value,
        )
        OmegaConf.update(node, rename.new, value, force_add=True)
        for implied, implied_value in rename.implies.items():
            OmegaConf.update(node, implied, implied_value, force_add=True)


def _has(node, key: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    holder = OmegaConf.select(node, parent) if parent else node
    return holder is not None and hasattr(holder, "keys") and leaf in holder


def _delete(node, key: str) -> None:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    holder = OmegaConf.select(node, parent) if parent else node
    del holder[leaf]

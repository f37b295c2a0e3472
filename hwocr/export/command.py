"""The export, step by step: resolve the source, merge, copy the adapter, write the cards, log."""

import logging
import shutil
from pathlib import Path

from hwocr.export.card import RunRecords, render, template_values
from hwocr.export.config import ExportConfig, check_export_config
from hwocr.export.merge import copy_adapter, write_merged
from hwocr.export.source import check_output, resolve
from hwocr.io import write_atomic, write_json
from hwocr.model import load_processor

log = logging.getLogger("hwocr.export")

CARD = "README.md"
RECORD = "export.json"


def export(cfg: ExportConfig) -> Path:
    """Write the export folder; returns its path. Nothing is left behind if a step fails."""
    check_export_config(cfg)
    source = resolve(cfg)
    output = check_output(cfg.output)
    records = RunRecords(source.run_dir, source.adapter_dir)
    settings = {
        "base_model": cfg.base_model,
        "repo_id": cfg.repo_id,
        "license": cfg.license,
        "max_new_tokens": cfg.max_new_tokens,
    }
    values = template_values(source, records, settings, load_processor(source.model))
    if values["base"]["hub_id"] is None:
        log.warning(
            "model.source=%s is a local checkpoint: the card names no base_model on the hub; pass "
            "base_model=<hub id> to say which one it is",
            source.model.source,
        )
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        merged = write_merged(source, partial)
        left_out = copy_adapter(
            source, partial / "adapter", values["base"]["hub_id"], values["base"]["revision"]
        )
        write_atomic(partial / CARD, render(values))
        write_atomic(partial / "adapter" / CARD, render(values, adapter_card=True))
        write_json(
            partial / RECORD,
            {
                "run": str(source.run_dir) if source.run_dir else None,
                "adapter": str(source.adapter_dir),
                "base_model": values["base"]["hub_id"],
                "base_revision": values["base"]["revision"],
                "model_source": source.model.source,
                "dtype": source.dtype,
                "trained_in_4bit": source.trained_in_4bit,
                "merged": merged,
                "adapter_files_left_out": left_out,
                "hwocr_version": values["hwocr_version"],
            },
        )
        if output.exists():
            output.rmdir()  # empty (check_output)
        partial.rename(output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("exported %s to %s", source.run_dir or source.adapter_dir, output)
    if cfg.tracking and records.mlflow:
        from hwocr.export.tracking import log_export

        log_export(records.mlflow, output)
    return output

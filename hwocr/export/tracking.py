"""The export recorded in the run's MLflow run: its card and export.json as artifacts, its path as a tag."""

import logging
from pathlib import Path

log = logging.getLogger(__name__)

ARTIFACT_DIR = "export"
PATH_TAG = "hwocr.export_dir"


def log_export(run_file: dict, output: Path) -> bool:
    """Log to the run that mlflow_run.json names; a store that cannot take it is a warning (the
    export itself stands). Returns whether it was logged."""
    from mlflow.exceptions import MlflowException

    from hwocr.tracking.store import open_client

    uri, run_id = run_file.get("uri"), run_file.get("run_id")
    if not uri or not run_id:
        return False
    try:
        client = open_client(uri)
        for name in ("README.md", "export.json"):
            client.log_artifact(run_id, str(output / name), ARTIFACT_DIR)
        client.set_tag(run_id, PATH_TAG, str(output))
    except (MlflowException, OSError) as error:
        log.warning("the export was not logged to MLflow run %s in %s: %s", run_id, uri, error)
        return False
    log.info("logged the export's card to MLflow run %s (%s/)", run_id, ARTIFACT_DIR)
    return True

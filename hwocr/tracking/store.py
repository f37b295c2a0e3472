"""Opening an MLflow tracking store.

A sqlite store creates and migrates its tables when its first client opens it. Two processes doing
that at once (two runs, or a sweep's parallel jobs, started together on a fresh outputs/mlflow.db)
collide inside MLflow's migration and one dies with a database error, so hwocr opens sqlite stores
under a lock file beside the database.
"""

from pathlib import Path

from filelock import FileLock
from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"


def open_client(uri: str) -> MlflowClient:
    """MlflowClient(uri), made under a lock beside the database for a sqlite store."""
    if not uri.startswith(SQLITE):
        return MlflowClient(uri)
    database = Path(uri.removeprefix(SQLITE))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        return MlflowClient(uri)

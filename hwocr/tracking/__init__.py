"""MLflow tracking: the run client (client.py), the offline journal and its upload (sync.py), the
redaction of secrets before anything is logged (redact.py), and opening a store (store.py)."""

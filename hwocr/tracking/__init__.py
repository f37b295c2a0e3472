"""MLflow tracking: the run client (client.py), the offline journal and its upload (sync.py), and the
redaction of secrets before anything is logged (redact.py)."""

"""Keep secrets out of MLflow: params, tags and the resolved config artifact.

A value is replaced by `REDACTED` when its key looks secret (`*token*`, `*_key`, `*secret*`,
`*password*`, ...), and any occurrence of a secret environment variable's value (HF_TOKEN,
MLFLOW_TRACKING_TOKEN, any `*_TOKEN`, `*_KEY`, `*_SECRET`, `*_PASSWORD`) is masked in any text
logged, whatever its key.
"""

import os
import re
from collections.abc import Mapping

REDACTED = "***redacted***"
_SECRET_NAME = re.compile(
    r"(^|[_\-])(token|secret|password|passwd|credentials?|key|api_?key)$", re.IGNORECASE
)
_SECRET_ENV = re.compile(r"(^HF_TOKEN$|_TOKEN$|_KEY$|_SECRET$|_PASSWORD$|^MLFLOW_TRACKING_(TOKEN|PASSWORD)$)")
MIN_SECRET_LEN = 4  # shorter values would mask ordinary text


def is_secret_key(key: str) -> bool:
    """True for a config/param key whose last component names a secret (`hub.token`, `api_key`)."""
    last = str(key).rsplit(".", 1)[-1]
    return bool(_SECRET_NAME.search(last))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if _SECRET_ENV.search(k.upper()) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for secret in secret_env_values() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_mapping(values: Mapping[str, object]) -> dict[str, object]:
    """A copy with secret keys' values replaced and secret env values masked in the rest."""
    secrets = secret_env_values()
    out: dict[str, object] = {}
    for key, value in values.items():
        if is_secret_key(key) and value not in (None, ""):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = redact_text(value, secrets)
        else:
            out[key] = value
    return out


def redact_yaml(text: str) -> str:
    """Mask `key: value` lines whose key looks secret, then any secret env value left in the text."""
    pattern = re.compile(r"^(\s*)([^\s:#][^:#]*?)(\s*:\s*)(\S.*)$")
    lines = []
    for line in text.splitlines(keepends=True):
        match = pattern.match(line.rstrip("\n"))
        if (
            match
            and is_secret_key(match.group(2).strip("'\""))
            and match.group(4) not in ("null", "''", '""')
        ):
            line = f"{match.group(1)}{match.group(2)}{match.group(3)}{REDACTED}\n"
        lines.append(line)
    return redact_text("".join(lines))

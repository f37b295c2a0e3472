"""Keep secrets out of MLflow and off the disk: params, tags, the resolved config artifact, and the
copies of the config that Hydra writes (.hydra/, multirun.yaml).

A value is replaced by `REDACTED` when its key looks secret (`*token*`, `*_key`, `*secret*`,
`*password*`, ...), and any occurrence of a secret environment variable's value (HF_TOKEN,
MLFLOW_TRACKING_TOKEN, any `*_TOKEN`, `*_KEY`, `*_SECRET`, `*_PASSWORD`) is masked in any text
logged, whatever its key.
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path

from hwocr.io import write_atomic

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


def redact_override(line: str) -> str:
    """`+hub.token=abc` -> `+hub.token=***redacted***`; secret env values masked in any override."""
    key, sep, value = str(line).partition("=")
    if sep and value and is_secret_key(key.lstrip("+~")):
        return f"{key}={REDACTED}"
    return redact_text(str(line))


def redact_command(argv: list[str]) -> list[str]:
    """A command line with secret-looking overrides and secret env values masked."""
    return [redact_override(arg) for arg in argv]


def _redact_yaml_overrides(text: str) -> str:
    """YAML list items that are overrides (`- key=value`): mask those with a secret key."""
    out = []
    for line in text.splitlines(keepends=True):
        indent, dash, item = line.partition("- ")
        if dash and not indent.strip() and "=" in item:
            body = item.rstrip("\n")
            quote = body[0] if body[:1] in ("'", '"') and body.endswith(body[0]) else ""
            inner = body[1:-1] if quote else body
            line = f"{indent}- {quote}{redact_override(inner)}{quote}" + ("\n" if line.endswith("\n") else "")
        out.append(line)
    return "".join(out)


def redact_hydra_files(output_dir: Path) -> list[Path]:
    """Mask secrets in the copies Hydra writes to disk: OUTPUT_DIR/.hydra/*.yaml and a sweep dir's
    multirun.yaml (the config, the Hydra config with its env_set, the command-line overrides).
    Returns the files rewritten."""
    output_dir = Path(output_dir)
    changed = []
    for path in [*sorted((output_dir / ".hydra").glob("*.yaml")), output_dir / "multirun.yaml"]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        masked = redact_yaml(_redact_yaml_overrides(text))
        if masked != text:
            write_atomic(path, masked)
            changed.append(path)
    return changed

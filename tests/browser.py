"""Local servers and the browser for the UI tests: `mlflow ui`/`mlflow server` on a free loopback
port, and Debian's Chromium driven through playwright (tests skip without it)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# `mlflow ui` answers /health after 13-18 s on an idle 2-core machine, after more than 90 s on a busy one
SERVER_TIMEOUT_S = 180

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = SERVER_TIMEOUT_S
) -> float:
    """Seconds until GET url/health answers 200; fails (with the server log) on exit or timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            pytest.fail(f"mlflow exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow did not answer {url}/health within {timeout_s}s:\n{log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True: its own process group only."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    log_file = getattr(proc, "log_file", None)
    if log_file is not None and not log_file.closed:
        log_file.close()


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if pytest itself is killed (then no finalizer runs)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_mlflow(
    args: list[str], log_path: Path, port: int | None = None
) -> tuple[subprocess.Popen, str, float]:
    """`python -m mlflow ARGS` on `port` (a free one unless given: a restart reuses its port); returns
    the process, its URL and the seconds it took to answer /health. The log is appended to."""
    port = port or free_port()
    log_file = open(log_path, "a")  # noqa: SIM115 (closed by stop())
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    proc.log_file = log_file
    url = f"http://127.0.0.1:{port}"
    try:
        seconds = wait_healthy(url, proc, log_path)
    except BaseException:
        stop(proc)
        raise
    print(f"{args[0]} answered /health after {seconds:.1f} s")
    return proc, url, seconds


def server_args(root: Path) -> list[str]:
    """A tracking server with a sqlite backend and proxied artifacts, both under `root`."""
    return [
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]

"""Data-parallel runs from one command: launch one worker per device, shard and gather evaluation.

Hydra composes the config once in the launching process; the workers receive the typed config and
the run dir, so every rank shares one job dir and one MLflow run (only rank 0 talks to MLflow).
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")
SHARE_ONE_GPU = "HWOCR_SHARE_ONE_GPU"  # =1: all ranks on GPU 0 over gloo (benchmarks/ddp_check.py)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Rank:
    return Rank(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def in_worker() -> bool:
    return "LOCAL_RANK" in os.environ


STOP_REQUEST = signal.SIGUSR1  # what the launching process forwards to its workers on SIGTERM


@dataclass(frozen=True)
class Stopped:
    """What a worker returns when a signal stopped training after a checkpoint was saved: a raised
    error would read as a failed worker ("a worker process failed") instead of a resumable stop."""

    message: str
    step: int
    checkpoint: Path | None


def stop_signals() -> tuple[int, ...]:
    """The signals that stop training gracefully in this process (GracefulStop)."""
    return (signal.SIGTERM, STOP_REQUEST) if in_worker() else (signal.SIGTERM,)


def _workers() -> list[multiprocessing.Process]:
    """This process's live multiprocessing children: the workers elastic spawned (its other helpers,
    such as the resource tracker, are not multiprocessing Processes)."""
    return multiprocessing.active_children()


def _shut_down_workers(signum: int, frame) -> None:
    """What elastic does on a signal it handles: raise SignalException, on which its agent stops the
    workers and re-raises."""
    from torch.distributed.elastic.multiprocessing import SignalException

    sigval = signal.Signals(signum)
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)


@contextlib.contextmanager
def _forwarding_sigterm() -> Iterator[None]:
    """SIGTERM to the launching process (a scheduler's preemption notice) becomes a stop request to
    every worker: they save a checkpoint at the same step and return Stopped. (Left to elastic, a
    SIGTERM here tears the workers down and the job ends as "a worker process failed".) A second
    SIGTERM is elastic's again: it shuts the workers down."""
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum, frame):
        workers = _workers()
        log.warning("received SIGTERM: asking %d workers to save a checkpoint and stop", len(workers))
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, STOP_REQUEST)
        signal.signal(signal.SIGTERM, _shut_down_workers)  # a second SIGTERM: as elastic handles one

    signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch(worker: Callable, args: tuple, nprocs: int, collective_timeout_s: int) -> object:
    """Run `worker(*args)` in `nprocs` local processes (torch elastic); return rank 0's result.

    If any rank dies, elastic tears the others down and raises ChildFailedError naming the rank,
    instead of leaving the survivors blocked in a collective. SIGTERM asks the workers to stop
    gracefully (`_forwarding_sigterm`); they then return `Stopped`.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ["HWOCR_COLLECTIVE_TIMEOUT_S"] = str(collective_timeout_s)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=f"hwocr-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=1,
        start_method="spawn",
        signals_to_handle="SIGINT,SIGHUP,SIGQUIT",  # SIGTERM: _forwarding_sigterm
    )
    log.info("launching %d workers", nprocs)
    with _forwarding_sigterm():
        return elastic_launch(config, worker)(*args)[0]


def init(device: str) -> Rank:
    """Join the process group (gloo on CPU, NCCL on GPUs) with a bounded collective timeout."""
    rank = current()
    if rank.world_size == 1 or dist.is_initialized():
        return rank
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda" and os.environ.get(SHARE_ONE_GPU) == "1":
        # A check of the multi-GPU code path on a one-GPU machine (NCCL refuses two ranks on one
        # device): every rank uses GPU 0, and the gradients travel over gloo.
        os.environ["LOCAL_RANK"] = "0"  # what accelerate and the Trainer read to pick the device
        rank, backend = current(), "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank.local_rank)
    timeout = timedelta(seconds=int(os.environ.get("HWOCR_COLLECTIVE_TIMEOUT_S", 1800)))
    dist.init_process_group(backend=backend, timeout=timeout)
    return rank


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(items: Sequence[T], rank: Rank) -> list[T]:
    """Every world_size-th item: shards differ by at most one item, so ranks finish together."""
    return list(items[rank.rank :: rank.world_size])


def gather_in_order(shard_items: list[T], rank: Rank) -> list[T]:
    """Inverse of `shard`: every rank gets all items in the original order, each exactly once."""
    if rank.world_size == 1:
        return list(shard_items)
    gathered: list[list[T]] = [[] for _ in range(rank.world_size)]
    dist.all_gather_object(gathered, shard_items)
    return interleave(gathered)


def interleave(shards: list[list[T]]) -> list[T]:
    """Undo `shard`: item i of shard r was item i * world_size + r of the whole."""
    ordered = []
    for index in range(max((len(s) for s in shards), default=0)):
        ordered.extend(s[index] for s in shards if index < len(s))
    return ordered


def configure_worker_logging() -> None:
    """Spawned workers inherit no logging setup from Hydra; tag each line with its rank. A stop
    request outside training (no checkpoint to save yet) is ignored rather than killing the worker."""
    signal.signal(STOP_REQUEST, signal.SIG_IGN)
    rank = current()
    logging.basicConfig(
        level=logging.INFO if rank.is_main else logging.WARNING,
        format=f"[%(asctime)s][rank {rank.rank}][%(name)s][%(levelname)s] - %(message)s",
    )


def describe_failure(error) -> str:
    """One line per failed rank: exit code or signal, and where its error was recorded."""
    lines = []
    for local_rank, failure in sorted(error.failures.items()):
        cause = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        lines.append(f"  rank {local_rank} (pid {failure.pid}): {cause}; {message or 'no message recorded'}")
    return "\n".join(lines)

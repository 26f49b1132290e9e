"""Leases that let concurrent scoring jobs share one bulk registration without starving each other.

TorchServe keeps a single worker count per model version and no record of who asked for it. A
job that scales the bulk registration back down when it ends would take the workers away from
a job still running. So each job holds a lease (a small JSON file) while it runs: the worker
count is the largest any live job asked for, and only the last job to finish scales down.

The management API listens on loopback only, so every job that can reach it runs on this host
and the leases live in a local directory, one per server. A job killed with SIGKILL leaves its
file behind; a lease whose process is gone counts as released.

Starting workers costs seconds (4 of a 5.5 s 1M-row job): where jobs follow each other, keep the
workers up between them with a fixed `--idle-workers N` rather than any timer in the client.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from movierec.client.api import ConfigError, MovieRecClient, MovieRecError

ENV_STATE_DIR = "MOVIEREC_STATE_DIR"


def state_dir() -> Path:
    """Where the client keeps per-host state: $MOVIEREC_STATE_DIR or ~/.cache/movierec/state."""
    configured = os.environ.get(ENV_STATE_DIR)
    return Path(configured) if configured else Path.home() / ".cache" / "movierec" / "state"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's job: alive, just not ours to signal
    return True


class JobLeases:
    """The scoring jobs running against one TorchServe management API."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_server(cls, management_url: str, root: str | os.PathLike[str] | None = None) -> JobLeases:
        """The leases of the server at `management_url`, under `root` or state_dir()."""
        netloc = urlsplit(management_url).netloc or management_url
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", netloc)
        return cls(Path(root or state_dir()) / "score-jobs" / name)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the server's job lock: scaling happens one job at a time.

        flock is released by the kernel when its holder dies, so a killed job never wedges it.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = open(self.directory / ".lock", "a")  # noqa: SIM115 - closed below, after unlocking
        except OSError as exc:
            raise ConfigError(
                f"cannot keep scoring-job leases in {self.directory} ({exc.strerror}); "
                f"set {ENV_STATE_DIR} to a writable directory"
            ) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, target: str, workers: int) -> Path:
        """Record that this process runs a job needing `workers` workers on `target`."""
        lease = self.directory / f"{os.getpid()}-{uuid.uuid4().hex}.json"
        tmp = lease.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "target": target, "workers": workers}))
        tmp.replace(lease)
        return lease

    def remove(self, lease: Path) -> None:
        """Release a lease taken with add()."""
        lease.unlink(missing_ok=True)

    def workers(self, target: str) -> int:
        """The most workers any live job on `target` asked for; 0 when none runs.

        Leases of dead processes and unreadable leases are deleted on the way.
        """
        wanted = 0
        for lease in self.directory.glob("*.json"):
            try:
                entry = json.loads(lease.read_text())
                pid, workers = int(entry["pid"]), int(entry["workers"])
            except (OSError, ValueError, KeyError, TypeError):
                lease.unlink(missing_ok=True)
                continue
            if not _pid_alive(pid):
                lease.unlink(missing_ok=True)
            elif entry.get("target") == target:
                wanted = max(wanted, workers)
        return wanted


def release(client: MovieRecClient, jobs: JobLeases, target: str, idle_workers: int) -> None:
    """After a job on target (model/version): leave running jobs their workers, else scale to idle_workers.

    Call under jobs.locked(), after removing the job's lease. Never raises for the server: the job's
    own outcome matters more than its clean-up.
    """
    model, version = target.rsplit("/", 1)
    workers = jobs.workers(target) or idle_workers
    try:
        client.scale(version, workers, model=model)
    except MovieRecError as exc:
        print(f"warning: could not scale {target} to {workers} workers: {exc}", file=sys.stderr)

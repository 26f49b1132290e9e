"""Leases that let concurrent scoring jobs share one bulk registration without starving each other.

TorchServe keeps a single worker count per model version and no record of who asked for it. A
job that scales the bulk registration back down when it ends would take the workers away from
a job still running. So each job holds a lease (a small JSON file) while it runs: the worker
count is the largest any live job asked for, and only the last job to finish scales down.

The management API listens on loopback only, so every job that can reach it runs on this host
and the leases live in a local directory, one per server. A job killed with SIGKILL leaves its
file behind; a lease whose process is gone counts as released.

Starting workers costs seconds (4 of a 5.5 s 1M-row job), so the last job can leave them up for a
linger time: it writes a linger marker with a fresh token and starts a detached process (this
module's main) that sleeps, then, under the lock, scales down only if no job holds a lease and the
marker still carries its token. A job that starts meanwhile finds the workers READY; when it ends it
writes a newer token, so the older lingerer does nothing and the newer one decides.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from movierec.client.api import ConfigError, Endpoints, MovieRecClient, MovieRecError

ENV_STATE_DIR = "MOVIEREC_STATE_DIR"
# The detached lingerer's command line (not `-m movierec.client.jobs`: the package imports this module first).
LINGERER = (sys.executable, "-c", "import sys; from movierec.client.jobs import main; sys.exit(main(sys.argv[1:]))")


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

    def _linger_path(self, target: str) -> Path:
        # Not *.json: workers() reads those as leases.
        return self.directory / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', target)}.linger"

    def mark_linger(self, target: str, seconds: float) -> str:
        """Record that `target` lingers for `seconds` from now; the token names this linger (newer ones replace it)."""
        token = uuid.uuid4().hex
        path = self._linger_path(target)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"token": token, "target": target, "until": time.time() + seconds}))
        tmp.replace(path)
        return token

    def linger_token(self, target: str) -> str | None:
        """The token of the newest linger of `target`, or None."""
        try:
            return json.loads(self._linger_path(target).read_text())["token"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def end_linger(self, target: str, token: str, scale_down: Callable[[], None]) -> bool:
        """Call scale_down if `target` has no live job and `token` is still its newest linger; True if it did."""
        with self.locked():
            if self.workers(target) or self.linger_token(target) != token:
                return False
            scale_down()
            self._linger_path(target).unlink(missing_ok=True)
            return True


def start_linger(
    jobs: JobLeases, endpoints: Endpoints, model: str, version: str, idle_workers: int, seconds: float
) -> str:
    """Mark a linger of model/version and start the detached process that ends it; call under jobs.locked()."""
    token = jobs.mark_linger(f"{model}/{version}", seconds)
    args = [
        *("--leases", str(jobs.directory), "--token", token, "--seconds", str(seconds)),
        *("--model", model, "--version", version, "--idle-workers", str(idle_workers)),
        *("--inference-url", endpoints.inference_url, "--management-url", endpoints.management_url),
        *("--key-file", str(endpoints.key_file)),
    ]
    # Its own session: Ctrl-C in the terminal that ran the job must not stop the scale-down.
    subprocess.Popen(
        [*LINGERER, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return token


def release(client: MovieRecClient, jobs: JobLeases, target: str, idle_workers: int, linger_s: float) -> None:
    """After a job on target (model/version): leave running jobs their workers, else linger or scale to idle.

    Call under jobs.locked(), after removing the job's lease. Never raises for the server: the job's
    own outcome matters more than its clean-up.
    """
    model, version = target.rsplit("/", 1)
    running = jobs.workers(target)
    if not running and linger_s > 0:
        try:
            start_linger(jobs, client.endpoints, model, version, idle_workers, linger_s)
            return
        except OSError as exc:
            print(f"warning: cannot leave {target} up ({exc}); scaling it down now", file=sys.stderr)
    workers = running or idle_workers
    try:
        client.scale(version, workers, model=model)
    except MovieRecError as exc:
        print(f"warning: could not scale {target} to {workers} workers: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The lingerer: sleep, then scale model/version to --idle-workers unless a job started meanwhile."""

    p = argparse.ArgumentParser(prog="movierec-lingerer", description=main.__doc__)
    for flag in ("--leases", "--token", "--model", "--version", "--inference-url", "--management-url", "--key-file"):
        p.add_argument(flag, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--idle-workers", type=int, required=True)
    args = p.parse_args(argv)
    time.sleep(args.seconds)
    jobs = JobLeases(args.leases)
    with MovieRecClient(args.inference_url, args.management_url, args.key_file) as client:

        def scale_down() -> None:
            client.scale(args.version, args.idle_workers, model=args.model)

        try:
            jobs.end_linger(f"{args.model}/{args.version}", args.token, scale_down)
        except MovieRecError:
            return 1  # the server went away or no longer serves the version: nothing left to scale
    return 0

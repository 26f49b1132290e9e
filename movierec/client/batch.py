"""How a bulk job (`score`, `recommend-all`) runs on the movierec-batch registration: its options, its worker
lease, and the resend of requests lost with a worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from movierec.client.api import DEFAULT_MODEL, ConfigError, MovieRecClient, NotFound, archive_name, recovering
from movierec.client.jobs import JobLeases, release
from movierec.client.settings import (
    BATCH_MODEL,
    DEFAULT_CONCURRENCY,
    DEFAULT_IDLE_WORKERS,
    DEFAULT_ROUTE,
    DEFAULT_WORKERS,
)

T = TypeVar("T")


@dataclass
class BatchSettings:
    """How a job sizes the bulk-scoring registration (its batching is fixed when the server starts)."""

    workers: int = DEFAULT_WORKERS
    idle_workers: int = DEFAULT_IDLE_WORKERS  # what the last job leaves up: N > 0 spares the next job the start-up


@dataclass
class BatchJob:
    """The options every bulk job shares: where it runs, how many requests it keeps in flight, whether it resumes.

    Concurrent jobs on one server share the registration through `jobs` (by default leases under
    state_dir()): it runs the most workers any of them asked for, and the last one to finish scales it
    down to `settings.idle_workers`. With manage=False the registration and its workers are left as they are.
    """

    model: str = DEFAULT_MODEL
    version: str | None = None  # None: the default version of `model`
    batch_model: str = BATCH_MODEL
    settings: BatchSettings = field(default_factory=BatchSettings)
    manage: bool = True
    jobs: JobLeases | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    resume: bool = False
    progress: bool = True


@dataclass(frozen=True)
class BatchLease:
    """The version a bulk job runs on, and its scale-up, which brings workers back after a restart (None: unmanaged)."""

    version: str | None
    revive: Callable[[], object] | None = None

    def resend(self, send: Callable[[], T]) -> T:
        """Call `send`; a request lost with its worker (or a restart) is sent again once workers are back."""
        # Bulk requests are idempotent, so sending one twice is safe.
        return recovering(send, revive=self.revive)


def ensure_batch_registration(
    client: MovieRecClient, *, model: str = DEFAULT_MODEL, version: str | None = None, batch_model: str = BATCH_MODEL
) -> str:
    """The version of `model` to run a bulk job on, after checking `batch_model` serves it.

    `movierec-serve start` registers `batch_model` for every version in the model store (0 workers);
    nothing can be registered over the API, so a missing one is a ConfigError saying what to do.
    """
    version = version or client.default_version(model)
    try:
        present = version in client.versions(batch_model)
    except NotFound:
        present = False
    if not present:
        raise ConfigError(
            f"{batch_model} has no version {version}: the server registers it at start for every "
            f"movierec-VERSION.mar in its model store; put {archive_name(version)} there and run "
            f"movierec-serve reload --run-dir RUN_DIR"
        )
    return version


@contextmanager
def leased_batch_version(client: MovieRecClient, job: BatchJob) -> Iterator[BatchLease]:
    """Check the job's batch model serves its version and hold a worker lease on it for the job.

    Yields the version the job runs against and its scale-up: a server (re)start registers the batch model
    with 0 workers, so a job that meets "has no worker" runs it again (management.recovering).
    """
    jobs = job.jobs or JobLeases.for_server(client.endpoints.management_url)
    with jobs.locked():
        version = ensure_batch_registration(client, model=job.model, version=job.version, batch_model=job.batch_model)
        target = f"{job.batch_model}/{version}"
        lease = jobs.add(target, job.settings.workers)

    def scale_up() -> None:
        with jobs.locked():
            client.scale(version, jobs.workers(target), model=job.batch_model)

    try:
        scale_up()
        yield BatchLease(version, scale_up)
    finally:
        # Runs on errors and Ctrl-C too (even during scale-up): idle bulk workers only hold memory,
        # but a job still running keeps the workers it asked for.
        with jobs.locked():
            jobs.remove(lease)
            release(client, jobs, target, job.settings.idle_workers)


def run_on_batch(
    client: MovieRecClient, job: BatchJob, run: Callable[[BatchLease], T], route: str = DEFAULT_ROUTE
) -> T:
    """Run a bulk job on its version of the batch model: under a worker lease, as it is (manage=False), or on the
    v1 route (KServe's, which has no version)."""
    if route == "v1":
        return run(BatchLease(None))
    if not job.manage:
        return run(BatchLease(job.version or client.default_version(job.batch_model)))
    with leased_batch_version(client, job) as lease:
        return run(lease)

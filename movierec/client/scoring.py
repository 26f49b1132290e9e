"""Bulk scoring of (user_id, movie_id) rows through a dedicated TorchServe registration (JSON path and job setup)."""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from model.protocol import MAX_INSTANCES  # noqa: F401 - the server's default cap, re-exported for callers
from movierec.client.api import (
    DEFAULT_MODEL,
    ConfigError,
    MovieRecClient,
    NotFound,
    ServerError,
    archive_name,
    recovering,
)
from movierec.client.arrow_scoring import post_arrow, score_file_arrow

# Re-exported too: callers import InputError, OUTPUT_HEADER and the CSV helpers from here.
from movierec.client.columnar import (  # noqa: F401
    OUTPUT_HEADER,
    InputError,
    Record,
    Row,
    chunked,
    completed_rows,
    count_data_lines,
    find_columns,
    is_parquet,
    prepare_output,
    read_rows,
    write_chunk,
)
from movierec.client.jobs import JobLeases, release
from movierec.client.progress import Progress  # noqa: F401 - re-exported for the Arrow and recommend-all jobs
from movierec.client.score_job import (  # noqa: F401 - re-exported: callers read these from here
    MODE_CHANGED,
    PROBE_ID,
    SYNC_INTERVAL_S,
    ScoreSummary,
    check_job,
    v1_path,
)
from movierec.client.settings import (  # noqa: F401 - re-exported: callers read the job defaults from here
    BATCH_MODEL,
    DEFAULT_ARROW_CHUNK,
    DEFAULT_CHUNK,
    DEFAULT_CONCURRENCY,
    DEFAULT_IDLE_WORKERS,
    DEFAULT_LINGER_S,
    DEFAULT_PROTOCOL,
    DEFAULT_ROUTE,
    DEFAULT_WORKERS,
    PROTOCOLS,
    ROUTES,
)

Instance = dict[str, str]
Prediction = dict[str, Any]
ScoreChunk = Callable[[list[Instance]], list[Prediction]]
JSON_HEADERS = {"Content-Type": "application/json"}


def answers_with_fallback(score_chunk: ScoreChunk) -> bool:
    """Whether the server flags answers from its average user/movie (cold_start: fallback): one probe pair."""
    answers = score_chunk([{"user_id": PROBE_ID, "movie_id": PROBE_ID}])
    if len(answers) != 1:
        raise ServerError(502, f"server returned {len(answers)} predictions for 1 probe instance")
    return answers[0].get("fallback") is not None


def score_chunk_rows(
    rows: list[Row], score_chunk: ScoreChunk, first_row: int = 1, fallback: bool = False
) -> list[Record]:
    """Score one chunk; rows that failed locally are not sent and keep their own error.

    With `fallback` each record ends with the answer's fallback flag ("" for a personal prediction).
    """
    instances = [{"user_id": u, "movie_id": m} for u, m, problem in rows if not problem]
    predictions = score_chunk(instances) if instances else []
    if len(predictions) != len(instances):
        raise ServerError(
            502,
            f"server returned {len(predictions)} predictions for {len(instances)} instances "
            f"(data rows {first_row}..{first_row + len(rows) - 1})",
        )
    answers = iter(predictions)
    out: list[Record] = []
    for u, m, problem in rows:
        p = {"error": problem} if problem else next(answers)
        rating, flag = p.get("rating"), p.get("fallback")
        if flag is not None and not fallback:
            raise ServerError(502, f"server flagged a cold-start fallback (data rows {first_row}..): {MODE_CHANGED}")
        if rating is not None:
            record: Record = (u, m, repr(float(rating)), "")
        else:
            record = (u, m, "", _one_line(p.get("error") or "no rating in the answer"))
        out.append((*record, flag or "") if fallback else record)
    return out


def _one_line(text: str) -> str:
    # Keep one record per physical line so output files stay easy to inspect.
    return text.replace("\r", " ").replace("\n", " ")


def score_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    score_chunk: ScoreChunk,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    progress: bool = True,
    fallback: bool | None = None,
) -> ScoreSummary:
    """Score a CSV with `score_chunk` (JSON instances), writing results strictly in input order.

    The output has a fallback column when `fallback` is true; None asks the server (answers_with_fallback).
    """
    check_job(input_path, output_path, chunk_size, concurrency)
    start = time.perf_counter()
    if fallback is None:
        fallback = answers_with_fallback(score_chunk)
    rows = read_rows(input_path)
    out, skipped = prepare_output(output_path, resume, fallback)
    for _ in itertools.islice(rows, skipped):
        pass
    scored = errors = fallbacks = 0
    shown = Progress(progress, count_data_lines(input_path) if progress else None, skipped, start)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="score")
    # Queue a second round of chunks so workers never wait for the writer; still bounded.
    pending: deque[Future[list[Record]]] = deque()
    last_sync = time.monotonic()
    try:

        def drain_one() -> None:
            nonlocal scored, errors, fallbacks, last_sync
            records = pending.popleft().result()
            # Flushed data survives a killed process; fsync (costly per chunk) bounds what an OS crash loses.
            sync = time.monotonic() - last_sync >= SYNC_INTERVAL_S
            write_chunk(out, records, sync=sync)
            if sync:
                last_sync = time.monotonic()
            scored += len(records)
            errors += sum(1 for r in records if r[3])
            fallbacks += sum(1 for r in records if r[4]) if fallback else 0
            shown.update(len(records), scored, errors)

        first_row = skipped + 1
        for chunk in chunked(rows, chunk_size):
            pending.append(pool.submit(score_chunk_rows, chunk, score_chunk, first_row, fallback))
            first_row += len(chunk)
            if len(pending) >= 2 * concurrency:
                drain_one()
        while pending:
            drain_one()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        shown.close()
        out.flush()
        os.fsync(out.fileno())
        out.close()
    return ScoreSummary(scored, errors, skipped, time.perf_counter() - start, fallbacks if fallback else None)


@dataclass
class BatchSettings:
    """How a job sizes the bulk-scoring registration (its batching is fixed when the server starts)."""

    workers: int = DEFAULT_WORKERS
    idle_workers: int = DEFAULT_IDLE_WORKERS
    linger_s: float = 0.0  # seconds the last job leaves its workers up before scaling to idle_workers


def default_chunk(protocol: str) -> int:
    """Rows per request when none is asked for: the server's cap for Arrow bodies, 5,000 for JSON."""
    return DEFAULT_ARROW_CHUNK if protocol == "arrow" else DEFAULT_CHUNK


def ensure_batch_registration(
    client: MovieRecClient,
    *,
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    batch_model: str = BATCH_MODEL,
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


def score_csv(
    client: MovieRecClient,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    chunk_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    settings: BatchSettings | None = None,
    batch_model: str = BATCH_MODEL,
    resume: bool = False,
    progress: bool = True,
    manage: bool = True,
    jobs: JobLeases | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    route: str = DEFAULT_ROUTE,
) -> ScoreSummary:
    """Score a CSV (or, over Arrow, a Parquet file) through the movierec-batch registration, scaling its workers.

    Concurrent jobs on one server share the registration through `jobs` (by default leases
    under state_dir()): it runs the most workers any of them asked for, and the last one to
    finish scales it down to `settings.idle_workers`, at once or after `settings.linger_s`
    seconds in which a new job finds the workers still up. With manage=False the registration
    and its workers are left as they are. `protocol` "arrow" sends Arrow bodies; "json" sends
    {"instances": [...]}. `route` "v1" posts to /v1/models/{batch_model}:predict (KServe's v1
    route, native in TorchServe), which has no version and needs manage=False.
    `chunk_size` None is default_chunk(protocol).
    """
    settings = settings or BatchSettings()
    check_protocol(protocol, input_path, output_path)
    check_route(route, manage, version)
    chunk_size = chunk_size or default_chunk(protocol)
    job = {"chunk_size": chunk_size, "concurrency": concurrency, "resume": resume, "progress": progress}
    run = functools.partial(
        _score, client, input_path, output_path, batch_model=batch_model, protocol=protocol, route=route, job=job
    )
    if route == "v1":
        return run(BatchLease(None))
    if not manage:
        return run(BatchLease(version or client.default_version(batch_model)))

    leased = leased_batch_version(
        client, model=model, version=version, batch_model=batch_model, settings=settings, jobs=jobs
    )
    with leased as lease:
        return run(lease)


@dataclass(frozen=True)
class BatchLease:
    """The version a bulk job runs on, and its scale-up, which brings workers back after a restart (None: unmanaged)."""

    version: str | None
    revive: Callable[[], object] | None = None


@contextmanager
def leased_batch_version(
    client: MovieRecClient,
    *,
    model: str,
    version: str | None,
    batch_model: str,
    settings: BatchSettings,
    jobs: JobLeases | None = None,
) -> Iterator[BatchLease]:
    """Check `batch_model` serves the version and hold a worker lease on it for one job (score, recommend-all).

    Yields the version the job runs against and its scale-up: a server (re)start registers `batch_model`
    with 0 workers, so a job that meets "has no worker" runs it again (management.recovering).
    """
    jobs = jobs or JobLeases.for_server(client.endpoints.management_url)
    with jobs.locked():
        version = ensure_batch_registration(client, model=model, version=version, batch_model=batch_model)
        target = f"{batch_model}/{version}"
        lease = jobs.add(target, settings.workers)

    def scale_up() -> None:
        with jobs.locked():
            client.scale(version, jobs.workers(target), model=batch_model)

    try:
        scale_up()
        yield BatchLease(version, scale_up)
    finally:
        # Runs on errors and Ctrl-C too (even during scale-up): idle bulk workers only hold memory,
        # but a job still running keeps the workers it asked for.
        with jobs.locked():
            jobs.remove(lease)
            release(client, jobs, f"{batch_model}/{version}", settings.idle_workers, settings.linger_s)


def check_route(route: str, manage: bool, version: str | None) -> None:
    """Refuse an unknown route, and the v1 route with settings it cannot honour."""
    if route not in ROUTES:
        raise InputError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if route == "v1" and manage:
        raise InputError("the v1 route needs --no-manage: KServe deployments expose no management API to scale with")
    if route == "v1" and version:
        raise InputError("the v1 route has no version in its path: drop --version (it scores the default version)")


def check_protocol(protocol: str, *paths: str | os.PathLike[str]) -> None:
    """Refuse an unknown protocol, and Parquet files on the JSON path (which reads and writes CSV only)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    parquet = [str(p) for p in paths if is_parquet(p)]
    if protocol == "json" and parquet:
        raise InputError(f"{parquet[0]}: Parquet needs the arrow protocol; the json protocol reads and writes CSV")


def _score(
    client: MovieRecClient,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    lease: BatchLease,
    *,
    batch_model: str,
    protocol: str,
    route: str,
    job: dict[str, Any],
) -> ScoreSummary:
    """Run the job against one version of the bulk registration (or the v1 route), with JSON or Arrow bodies."""
    version = lease.version
    resend = functools.partial(recovering, revive=lease.revive)
    if protocol == "arrow":

        def post(body: bytes) -> bytes:
            return resend(lambda: post_arrow(client, body, model=batch_model, version=version, route=route))

        return score_file_arrow(input_path, output_path, post, **job)

    def score_chunk(instances: list[Instance]) -> list[Prediction]:
        # Scoring is idempotent: a request lost with its worker is sent again once workers are back.
        return resend(lambda: send_chunk(instances))

    def send_chunk(instances: list[Instance]) -> list[Prediction]:
        if route == "v1":
            body = orjson.dumps({"instances": instances})
            answer = client.send("POST", "inference", v1_path(batch_model), data=body, headers=JSON_HEADERS)
            return orjson.loads(answer.content)["predictions"]
        return client.predict_many(instances, model=batch_model, version=version)["predictions"]

    return score_file(input_path, output_path, score_chunk, **job)

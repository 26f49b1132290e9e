"""Bulk scoring of (user_id, movie_id) rows through a dedicated TorchServe registration: the JSON codec, and
`score_csv`, which runs a job with either codec on the movierec-batch registration."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from model.protocol import MAX_INSTANCES  # noqa: F401 - the server's default cap, re-exported for callers
from movierec.client.api import MovieRecClient, ServerError
from movierec.client.arrow_scoring import ArrowCodec, post_arrow
from movierec.client.batch import (  # noqa: F401 - BatchSettings and ensure_batch_registration re-exported (bench)
    BatchJob,
    BatchLease,
    BatchSettings,
    ensure_batch_registration,
    run_on_batch,
)
from movierec.client.columnar import (  # noqa: F401 - completed_rows re-exported for callers
    InputError,
    Row,
    chunked,
    completed_rows,
    is_parquet,
    read_rows,
)
from movierec.client.score_job import MODE_CHANGED, PROBE_ID, ScoreSummary, score_records, score_with, v1_path
from movierec.client.settings import (  # noqa: F401 - re-exported: callers read the job defaults from here
    BATCH_MODEL,
    DEFAULT_ARROW_CHUNK,
    DEFAULT_CHUNK,
    DEFAULT_CONCURRENCY,
    DEFAULT_IDLE_WORKERS,
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


class JsonCodec:
    """Scoring over JSON: CSV rows read as they arrive (a pipe works too), {"instances": [...]} through `score_chunk`."""

    default_chunk = DEFAULT_CHUNK

    def __init__(self, score_chunk: ScoreChunk) -> None:
        self.score_chunk = score_chunk

    def probe(self) -> bool:
        """Whether the server flags answers from its average user/movie (cold_start: fallback): one probe pair."""
        answers = self.score_chunk([{"user_id": PROBE_ID, "movie_id": PROBE_ID}])
        if len(answers) != 1:
            raise ServerError(502, f"server returned {len(answers)} predictions for 1 probe instance")
        return answers[0].get("fallback") is not None

    def chunks(self, path: str | os.PathLike[str], size: int, skip: int) -> Iterator[list[Row]]:
        """Lists of at most `size` CSV rows after the first `skip`."""
        return chunked(itertools.islice(read_rows(path), skip, None), size)

    def score(self, rows: list[Row], first_row: int, fallback: bool) -> pa.Table:
        """Score one chunk; rows that failed locally are not sent and keep their own error."""
        instances = [{"user_id": u, "movie_id": m} for u, m, problem in rows if not problem]
        predictions = self.score_chunk(instances) if instances else []
        if len(predictions) != len(instances):
            raise ServerError(
                502,
                f"server returned {len(predictions)} predictions for {len(instances)} instances "
                f"(data rows {first_row}..{first_row + len(rows) - 1})",
            )
        answers = iter(predictions)
        ratings, errors, flags = np.full(len(rows), np.nan), [], []
        for i, (_, _, problem) in enumerate(rows):
            p = {"error": problem} if problem else next(answers)
            rating, flag = p.get("rating"), p.get("fallback")
            if flag is not None and not fallback:
                raise ServerError(
                    502, f"server flagged a cold-start fallback (data rows {first_row}..): {MODE_CHANGED}"
                )
            if rating is not None:
                ratings[i] = float(rating)
            errors.append(None if rating is not None else (p.get("error") or None))
            flags.append(flag or None)
        users = pa.array([u for u, _, _ in rows], pa.string())
        movies = pa.array([m for _, m, _ in rows], pa.string())
        flagged = pa.array(flags, pa.string()) if fallback else None
        return score_records(users, movies, ratings, pa.array(errors, pa.string()), flagged)


def score_file(
    input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], score_chunk: ScoreChunk, **job: Any
) -> ScoreSummary:
    """Score a CSV with `score_chunk` (JSON instances), writing results strictly in input order (score_with)."""
    return score_with(JsonCodec(score_chunk), input_path, output_path, **job)


def default_chunk(protocol: str) -> int:
    """Rows per request when none is asked for: the server's cap for Arrow bodies, 5,000 for JSON."""
    return DEFAULT_ARROW_CHUNK if protocol == "arrow" else DEFAULT_CHUNK


def score_csv(
    client: MovieRecClient,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    job: BatchJob | None = None,
    *,
    chunk_size: int | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    route: str = DEFAULT_ROUTE,
    **options: Any,
) -> ScoreSummary:
    """Score a CSV (or, over Arrow, a Parquet file) through the movierec-batch registration, scaling its workers.

    `job` (or its fields as keywords: `options`) says where and how (BatchJob). `protocol` "arrow" sends
    Arrow bodies; "json" sends {"instances": [...]}. `route` "v1" posts to /v1/models/{batch_model}:predict
    (KServe's v1 route, native in TorchServe), which has no version and needs manage=False.
    `chunk_size` None is default_chunk(protocol).
    """
    job = replace(job or BatchJob(), **options)
    check_protocol(protocol, input_path, output_path)
    check_route(route, job.manage, job.version)

    def run(lease: BatchLease) -> ScoreSummary:
        def post(body: bytes) -> bytes:
            return lease.resend(
                lambda: post_arrow(client, body, model=job.batch_model, version=lease.version, route=route)
            )

        def score_chunk(instances: list[Instance]) -> list[Prediction]:
            return lease.resend(lambda: send_json(client, instances, job.batch_model, lease.version, route))

        codec = ArrowCodec(post) if protocol == "arrow" else JsonCodec(score_chunk)
        return score_with(
            codec,
            input_path,
            output_path,
            chunk_size=chunk_size or None,
            concurrency=job.concurrency,
            resume=job.resume,
            progress=job.progress,
        )

    return run_on_batch(client, job, run, route)


def send_json(
    client: MovieRecClient, instances: list[Instance], model: str, version: str | None, route: str
) -> list[Prediction]:
    """POST {"instances": [...]} to /predictions/{model}[/{version}] or, on route "v1", /v1/models/{model}:predict."""
    if route == "v1":
        body = orjson.dumps({"instances": instances})
        answer = client.send("POST", "inference", v1_path(model), data=body, headers=JSON_HEADERS)
        return orjson.loads(answer.content)["predictions"]
    return client.predict_many(instances, model=model, version=version)["predictions"]


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

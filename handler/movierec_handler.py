"""TorchServe handler for movierec: a thin adapter from TorchServe's batch to model.service.

The archive carries the `model/` package and the artifact directory (`artifact/`) next to this
file; TorchServe makes that directory importable. TorchServe requires exactly one class here.
"""

from __future__ import annotations

import gc
import logging
import os
import time

import torch

from model.artifact import load_artifact
from model.core import Recommender
from model.protocol import Reply, ServiceOptions, error_reply, request_body
from model.service import RatingService

log = logging.getLogger(__name__)
WORKER_METRICS_LOGGER = "ts.metrics.caching_metric"
PER_BATCH_LINE = "Backend received inference at"
STREAM_NEXT = "ts_stream_next"  # TorchServe's response header: more answers follow on this stream


class MovierecHandler:
    """initialize() loads and validates the artifact once; handle() answers a batch of requests."""

    def __init__(self):
        self.service: RatingService | None = None
        self.model_version: str | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        """Load the artifact on the assigned device, set threads, and freeze the GC heap."""
        props = context.system_properties
        # One intra-op thread per worker: with more, a shared host makes every OpenMP region wait
        # on descheduled threads (measured 10-300x slower). Scale with workers instead.
        torch.set_num_threads(int(os.environ.get("MOVIEREC_TORCH_THREADS", "1")))
        gpu_id = props.get("gpu_id")
        device = f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu"
        self.model_version = str(context.manifest["model"].get("modelVersion", "unknown"))
        options = ServiceOptions.from_config((context.model_yaml_config or {}).get("handler"))
        model_dir = props["model_dir"]
        started = time.perf_counter()
        artifact = load_artifact(os.path.join(model_dir, "artifact"), map_location=device)
        recommender = Recommender(artifact, device=device, min_movie_ratings=options.min_movie_ratings)
        self.service = RatingService(
            recommender,
            model_version=self.model_version,
            max_instances=options.max_instances,
            max_top_k=options.max_top_k,
            max_users=options.max_users,
            cold_start=options.cold_start,
        )
        # torch leaves ~176k GC-tracked objects; freezing them stops every large JSON parse from
        # triggering full collections over them (about 4x faster parsing of big bodies).
        gc.collect()
        gc.freeze()
        meta = artifact.metadata
        log.info(
            "movierec %s loaded on %s in %.2fs: %d users, %d movies, val RMSE %.4f, data %s, parity %.1e",
            self.model_version,
            device,
            time.perf_counter() - started,
            len(artifact.users),
            len(artifact.movies),
            meta.get("metrics", {}).get("val_rmse", float("nan")),
            meta.get("data", {}).get("fingerprint"),
            recommender.parity,
        )
        # TorchServe's worker prints a [METRICS] line per batch (PredictionTime, a last-value
        # gauge) that the frontend reads back and parses. Dropping it measured +25% single-pair
        # throughput at c32; the frontend's own latency and queue metrics stay.
        quiet = not options.worker_metrics
        logging.getLogger(WORKER_METRICS_LOGGER).setLevel(logging.WARNING if quiet else logging.NOTSET)
        root = logging.getLogger()
        (root.addFilter if quiet else root.removeFilter)(_not_per_batch_line)
        self.initialized = True

    def preprocess(self, data: list[dict], context) -> list:
        """Each request's body as model.protocol.request_body reads it by the request's Content-Type.

        A JSON body stays raw (bytes when decode_input_request=false, else as TorchServe decoded it), an
        Arrow one is wrapped as an ArrowBody, and any other Content-Type, or none, becomes a RefusedBody (a 400).
        """
        bodies = [row.get("body") if row.get("body") is not None else row.get("data") for row in data]
        return [request_body(body, _content_type(context, idx)) for idx, body in enumerate(bodies)]

    def handle(self, data: list[dict], context) -> list[bytes]:
        """Answer every request of the batch, setting each one's own HTTP status."""
        try:
            replies = self.service.handle_batch(self.preprocess(data, context))
        except (MemoryError, torch.cuda.OutOfMemoryError):
            # Transient, unlike a bug: 507 (TorchServe's own status for it) tells clients the batch
            # was too big for the memory left, and the worker stays up for smaller ones.
            log.exception("movierec: out of memory answering a batch of %d", len(data))
            message = "out of memory for this batch; retry, or send fewer instances per request"
            replies = [error_reply(507, message, self.model_version)] * len(data)
        except Exception:
            # A bug must not take down the worker or leak a traceback; each request gets a JSON 500.
            log.exception("movierec: unexpected failure answering a batch of %d", len(data))
            replies = [error_reply(500, "internal error; see the server log", self.model_version)] * len(data)
        return self.postprocess(replies, context)

    def postprocess(self, replies: list[Reply], context) -> list[bytes]:
        """Set per-request status and content type; return the pre-serialized bodies (JSON or Arrow)."""
        for idx, reply in enumerate(replies):
            if reply.status != 200:
                context.set_response_status(reply.status, reply.reason, idx)
            context.set_response_content_type(idx, reply.content_type)
            if _content_type(context, idx) is None:
                # No Content-Type: a gRPC call (refused, see model.protocol). For a StreamPredictions the
                # 0.12 frontend reads this header and, without it, fails and kills the worker; "false"
                # makes this answer the stream's last. Over HTTP the answer then goes out chunked.
                context.set_response_header(idx, STREAM_NEXT, "false")
        return [reply.body for reply in replies]


def _not_per_batch_line(record: logging.LogRecord) -> bool:
    """False for the worker's "Backend received inference at" INFO line, logged for every batch.

    The frontend reads each such line back from the worker's stdout: 0.12 ms of CPU per request
    (14%) without batching. A root-logger filter, not a level, keeps TorchServe's other INFO lines.
    """
    return not (isinstance(record.msg, str) and record.msg.startswith(PER_BATCH_LINE))


def _content_type(context, idx: int) -> str | None:
    """A request's Content-Type from TorchServe's context, or None when it was sent without one.

    TorchServe 0.12 passes the HTTP headers under their names as sent (any case), and the body's
    own content type under the "body" parameter: {"body": {"content-type": ...}}.
    """
    get_all = getattr(context, "get_all_request_header", None)
    headers = (get_all(idx) if get_all else None) or {}
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == "content-type" and isinstance(value, str):
            return value
    body = headers.get("body")
    return body.get("content-type") if isinstance(body, dict) else None

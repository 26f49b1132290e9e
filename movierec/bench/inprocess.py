"""In-process measurements: the model paths and the whole request pipeline, without a server."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa

from model.protocol import ArrowBody
from model.service import RatingService
from movierec.bench.meter import CpuMeter, summarize, time_calls
from movierec.bench.peer import build_service
from movierec.bench.settings import ARROW_KIND, SEED, TOP_K, Settings

MIN_STAGE_CALLS = 20


@dataclass(frozen=True)
class Timed:
    """One in-process configuration: a stable id, the call, its rotating inputs and pairs per call."""

    id: str
    call: Callable
    inputs: list
    pairs: int


def load_service(artifacts) -> RatingService:
    """Load the artifact the way the handler does (1 torch thread, its `handler:` options), then freeze the GC heap."""
    service = build_service(artifacts, "bench")
    gc.collect()
    gc.freeze()
    return service


def make_bodies(service: RatingService, rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Pre-built request bodies of each kind, with known IDs sent as JSON numbers like real clients."""
    users = [int(u) for u in service.users.ids]
    movies = [int(m) for m in service.movies.ids]

    def pairs(n: int) -> list[dict]:
        """n random known (user, movie) pairs."""
        us, ms = rng.integers(0, len(users), n), rng.integers(0, len(movies), n)
        return [{"user_id": users[u], "movie_id": movies[m]} for u, m in zip(us.tolist(), ms.tolist(), strict=True)]

    bodies = {
        "single": [orjson.dumps(p) for p in pairs(1_000)],
        "bulk1k": [orjson.dumps({"instances": pairs(1_000)}) for _ in range(16)],
        "bulk10k": [orjson.dumps({"instances": pairs(10_000)}) for _ in range(8)],
        "topk": [orjson.dumps({"user_id": users[u], "top_k": TOP_K}) for u in rng.integers(0, len(users), 200)],
    }
    # The same pairs as bulk10k, so the two protocols score identical work.
    bodies[ARROW_KIND] = [arrow_body(orjson.loads(body)["instances"]) for body in bodies["bulk10k"]]
    return bodies


def arrow_body(instances: list[dict]) -> bytes:
    """One Arrow IPC stream of (user_id, movie_id) int64 columns, as `movierec score` sends known IDs."""
    users = pa.array([i["user_id"] for i in instances], pa.int64())
    movies = pa.array([i["movie_id"] for i in instances], pa.int64())
    batch = pa.record_batch([users, movies], names=["user_id", "movie_id"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def timed_configs(service: RatingService, bodies: dict[str, list[bytes]]) -> list[Timed]:
    """Every in-process configuration, in report order."""
    rec = service.rec
    rng = np.random.default_rng(SEED)
    n_users, n_movies = len(service.users), len(service.movies)
    configs = []
    for n, label in ((1, "1"), (1_000, "1k"), (10_000, "10k")):
        count = 16 if n <= 1_000 else 4
        batches = [(rng.integers(0, n_users, n), rng.integers(0, n_movies, n)) for _ in range(count)]
        configs.append(Timed(f"exact_{label}", lambda b: rec.predict_exact(*b), batches, n))
        configs.append(Timed(f"predict_{label}", lambda b: rec.predict(*b), batches, n))
    users = list(range(n_users))
    rng.shuffle(users)
    batch32 = [bodies["single"][i : i + 32] for i in range(0, 32 * 16, 32)]
    return [
        *configs,
        Timed("handle_bulk10k", lambda b: service.handle_batch([b]), bodies["bulk10k"], 10_000),
        Timed("handle_arrow10k", lambda b: service.handle_batch([ArrowBody(b)]), bodies[ARROW_KIND], 10_000),
        Timed("handle_single_x32", service.handle_batch, batch32, 32),
        Timed("recommend", lambda u: rec.recommend(u, TOP_K), users, 0),
        Timed("handle_topk", lambda b: service.handle_batch([b]), bodies["topk"], 0),
    ]


def check_service(service: RatingService, bodies: dict[str, list[bytes]]) -> None:
    """The bodies must be answerable, or every number below would time error replies."""
    for kind in ("bulk10k", "topk", ARROW_KIND):
        body = ArrowBody(bodies[kind][0]) if kind == ARROW_KIND else bodies[kind][0]
        reply = service.handle_batch([body])[0]
        if reply.status != 200:
            raise RuntimeError(f"in-process {kind} body answered {reply.status}: {reply.body[:200]!r}")


def check_handlers(configs: list[Timed]) -> None:
    """Every timed request-pipeline call must answer 200, or its numbers would time error replies."""
    for c in configs:
        if c.id.startswith("handle_"):
            bad = [reply for reply in c.call(c.inputs[0]) if reply.status != 200]
            if bad:
                raise RuntimeError(f"in-process {c.id} answered {bad[0].status}: {bad[0].body[:200]!r}")


def stage_times(service: RatingService, bodies: list[bytes], seconds: float) -> np.ndarray:
    """Median (parse, infer, render) ms of one body, over rotating bodies for at least `seconds`."""
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < MIN_STAGE_CALLS:
        body = bodies[len(times) % len(bodies)]
        t0 = time.perf_counter()
        jobs = service.parse([body])
        t1 = time.perf_counter()
        service.infer(jobs)
        t2 = time.perf_counter()
        service.render(jobs)
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return np.median(np.array(times), axis=0) * 1e3


def bench_inprocess(service: RatingService, bodies: dict[str, list[bytes]], s: Settings) -> dict:
    """Every configuration once per round, interleaved, plus where a 10k-pair body spends its time."""
    check_service(service, bodies)
    configs = timed_configs(service, bodies)
    check_handlers(configs)
    results: dict[str, list[dict]] = {c.id: [] for c in configs}
    stages, noise = [], []
    for r in range(s.rounds):
        with CpuMeter() as cpu:
            for c in configs:
                results[c.id].append(summarize(time_calls(c.call, c.inputs, s.inprocess_seconds), c.pairs))
            stages.append(stage_times(service, bodies["bulk10k"], s.inprocess_seconds))
        noise.append(cpu.noise_cores)
        print(f"in-process round {r + 1}/{s.rounds} done (noise {cpu.noise_cores:.2f} cores)", flush=True)
    parse_ms, infer_ms, render_ms = np.median(np.array(stages), axis=0).tolist()
    return {
        "configs": results,
        "stages_10k_ms": {"parse": parse_ms, "infer": infer_ms, "render": render_ms},
        "noise_cores": noise,
    }

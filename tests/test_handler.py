"""The TorchServe handler with a local stand-in for its context: batches of mixed good and bad requests."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from handler.movierec_handler import MovierecHandler
from model.artifact import load_artifact
from model.core import Recommender
from model.protocol import NOT_UTF8
from movierec.testing import LocalContext


@pytest.fixture(scope="module")
def handler(model_dir):
    h = MovierecHandler()
    h.initialize(
        LocalContext(model_dir, model_yaml_config={"handler": {"max_instances": 50, "max_top_k": 20, "max_users": 8}})
    )
    return h


@pytest.fixture(scope="module")
def reference(tiny_artifact):
    return Recommender(load_artifact(tiny_artifact))


def run(handler, bodies, as_dict=False):
    """Send a batch the way TorchServe does (raw bytes under "body") and decode the answers."""
    ctx = LocalContext(".")
    data = [{"body": b if as_dict else (json.dumps(b).encode() if not isinstance(b, bytes) else b)} for b in bodies]
    out = handler.handle(data, ctx)
    assert len(out) == len(bodies)
    assert all(isinstance(o, bytes) for o in out)
    assert all(ctx.content_types[i] == "application/json" for i in range(len(bodies)))
    return [(ctx.status(i), json.loads(o)) for i, o in enumerate(out)]


def test_mixed_batch_isolates_bad_requests(handler, reference, tiny_artifact):
    art = load_artifact(tiny_artifact)
    u, m = art.users.ids[3], art.movies.ids[7]
    expected = float(reference.predict_exact(np.array([3]), np.array([7]))[0])
    answers = run(
        handler,
        [
            {"user_id": int(u), "movie_id": int(m)},
            b"{not json",
            {"user_id": u, "movie_id": m},
            {"user_id": 999999, "movie_id": int(m)},
            {"user_id": int(u), "top_k": 5},
            {"user_id": int(u), "top_k": 500},
            {"instances": [{"user_id": u, "movie_id": m}, {"user_id": "nobody", "movie_id": m}, {"movie_id": m}]},
        ],
    )
    statuses = [s for s, _ in answers]
    assert statuses == [200, 400, 200, 404, 200, 400, 200]
    assert answers[0][1]["user_id"] == int(u) and answers[0][1]["rating"] == pytest.approx(expected, abs=1e-4)
    assert answers[2][1]["user_id"] == u  # the str spelling is echoed as given
    assert answers[2][1]["rating"] == answers[0][1]["rating"]
    assert "unknown user_id 999999" in answers[3][1]["error"]
    assert len(answers[4][1]["recommendations"]) == 5
    assert "top_k" in answers[5][1]["error"] and "20" in answers[5][1]["error"]  # cap from model-config YAML
    preds = answers[6][1]["predictions"]
    assert preds[0]["rating"] == pytest.approx(expected, abs=1e-4)
    assert preds[1]["error"] == "unknown user_id nobody"
    assert "movie_id" in preds[2]["error"] or "user_id" in preds[2]["error"]
    assert all(a["model_version"] == "1.0" for _, a in answers)


def test_decoded_bodies_work_too(handler, tiny_artifact):
    """With decode_input_request=true TorchServe hands over dicts; the answers must not change."""
    art = load_artifact(tiny_artifact)
    body = {"user_id": art.users.ids[0], "movie_id": art.movies.ids[0]}
    raw = run(handler, [body])
    decoded = run(handler, [dict(body)], as_dict=True)
    assert raw == decoded


def test_instances_cap_from_yaml(handler, tiny_artifact):
    art = load_artifact(tiny_artifact)
    items = [{"user_id": art.users.ids[0], "movie_id": art.movies.ids[0]}] * 51
    [(status, answer)] = run(handler, [{"instances": items}])
    assert status == 413 and "51 > 50" in answer["error"]


def test_users_per_request_cap_from_yaml(handler, tiny_artifact):
    users = list(load_artifact(tiny_artifact).users.ids[:9])
    [(ok, answer), (status, refused)] = run(handler, [{"users": users[:8], "top_k": 2}, {"users": users, "top_k": 2}])
    assert ok == 200 and len(answer["recommendations"]) == 8
    assert status == 413 and "9 > 8" in refused["error"]


def test_worker_metric_lines_are_off_unless_asked_for(model_dir, caplog):
    """TorchServe's own metrics cache prints a [METRICS] line per batch only with worker_metrics."""
    import logging
    from pathlib import Path

    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "movierec"
    caplog.set_level(logging.INFO)

    def emitted(options):
        MovierecHandler().initialize(LocalContext(model_dir, model_yaml_config={"handler": options}))
        caplog.clear()
        metrics.request_ids = {0: "req-1"}
        metrics.add_time("PredictionTime", 1.5)  # as ts/service.py does after each batch
        return [r.getMessage() for r in caplog.records if "[METRICS]" in r.getMessage()]

    assert len(emitted({"worker_metrics": True})) == 1
    assert emitted({}) == []


def test_the_workers_per_batch_info_line_is_dropped_and_its_other_lines_kept(model_dir, caplog):
    """TorchServe's "Backend received inference at" line per batch goes only with worker_metrics."""
    import logging

    caplog.set_level(logging.INFO)

    def emitted(options):
        MovierecHandler().initialize(LocalContext(model_dir, model_yaml_config={"handler": options}))
        caplog.clear()
        logging.info("Backend received inference at: %d", 1764400000)  # as ts/protocol/otf_message_handler.py
        logging.info("Backend worker process died.")
        return [r.getMessage() for r in caplog.records]

    assert emitted({}) == ["Backend worker process died."]
    assert emitted({"worker_metrics": True}) == [
        "Backend received inference at: 1764400000",
        "Backend worker process died.",
    ]
    assert emitted({}) == ["Backend worker process died."]


def test_refused_requests_leave_no_garbage_cycles_holding_the_batch(handler):
    """A refused body must not keep its batch alive in a reference cycle: after gc.freeze() only a
    rare full collection would free it, and the worker grew by ~4 KB per refused request."""
    import gc

    bad = [b"{not json", b"[1]", b'{"user_id": 1.5, "movie_id": 2}', b'{"user_id": 1}', b"\xff\xfe"]
    good = [{"instances": [{"user_id": 1, "movie_id": 1}] * 50}]
    gc.collect()
    gc.disable()
    try:
        answers = run(handler, [*bad, *good])
        assert [status for status, _ in answers] == [400] * len(bad) + [200]
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_unexpected_failure_is_a_json_500_for_the_batch_not_a_crash(model_dir):
    h = MovierecHandler()
    h.initialize(LocalContext(model_dir))

    def boom(bodies):
        raise RuntimeError("bug")

    h.service.handle_batch = boom
    answers = run(h, [{"user_id": 1, "movie_id": 1}, {"user_id": 2, "movie_id": 2}])
    assert [s for s, _ in answers] == [500, 500]
    assert all("internal error" in a["error"] for _, a in answers)


@pytest.mark.parametrize("error", [MemoryError, "cuda"])
def test_out_of_memory_is_a_json_507_for_the_batch(model_dir, error):
    import torch

    h = MovierecHandler()
    h.initialize(LocalContext(model_dir))

    def oom(bodies):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory") if error == "cuda" else MemoryError()

    h.service.handle_batch = oom
    answers = run(h, [{"user_id": 1, "movie_id": 1}, {"instances": []}])
    assert [s for s, _ in answers] == [507, 507]
    assert all("out of memory" in a["error"] for _, a in answers)


def test_mismatched_artifact_fails_to_load_with_a_clear_error(model_dir, tmp_path):
    bad = tmp_path / "mar"
    shutil.copytree(model_dir, bad)
    (bad / "artifact" / "rated.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="rated.npz"):
        MovierecHandler().initialize(LocalContext(bad))


def test_an_integer_id_beyond_64_bits_is_out_of_range_not_a_float(handler, tiny_artifact):
    art = load_artifact(tiny_artifact)
    u, m = int(art.users.ids[0]), int(art.movies.ids[0])
    huge = 2**70
    answers = run(
        handler,
        [
            {"user_id": huge, "movie_id": m},
            {"user_id": u, "movie_id": -huge},
            {"user_id": huge, "top_k": 3},
            {"instances": [{"user_id": u, "movie_id": m}, {"user_id": huge, "movie_id": m}]},
            {"users": [u, huge], "top_k": 2},
        ],
    )
    assert [s for s, _ in answers] == [400, 400, 400, 200, 200]
    errors = [
        answers[0][1]["error"],
        answers[1][1]["error"],
        answers[2][1]["error"],
        answers[3][1]["predictions"][1]["error"],
        answers[4][1]["recommendations"][1]["error"],
    ]
    for error, field in zip(errors, ["user_id", "movie_id", "user_id", "user_id", "user_id"], strict=True):
        assert f"'{field}' is out of range" in error and "float" not in error, error
    assert "rating" in answers[3][1]["predictions"][0]


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress(b'{"user_id": 1, "movie_id": 1}'),
        '{"user_id": "Jos\u00e9", "movie_id": 1}'.encode("latin-1"),
        b"\xff\xfe{\x00}\x00",
    ],
    ids=["gzip", "latin-1", "utf-16"],
)
def test_a_body_that_is_not_utf8_is_named_as_such(handler, body):
    [(status, answer)] = run(handler, [body])
    assert status == 400
    assert answer["error"] == NOT_UTF8
    assert "application/vnd.apache.arrow.stream" in answer["error"]


def test_a_surrogate_escaped_text_body_is_named_as_not_utf8(handler):
    """A str carrying undecodable bytes as surrogates (a lenient decoder's output) gets the same answer."""
    text = '{"user_id": "\udce9", "movie_id": 1}'
    [(status, answer)] = run(handler, [text], as_dict=True)
    assert (status, answer["error"]) == (400, NOT_UTF8)


def test_invalid_json_in_utf8_still_names_the_json_error(handler):
    [(status, answer)] = run(handler, [b'{"user_id": 1,'])
    assert status == 400 and answer["error"].startswith("request body is not valid JSON")


def test_only_an_answer_without_a_content_type_ends_a_stream(handler):
    """gRPC passes no Content-Type: its refusal carries ts_stream_next=false, so a StreamPredictions ends cleanly."""
    ctx = LocalContext(".", request_headers=[{}, {"Content-Type": "application/json"}])
    body = b'{"user_id": 1, "movie_id": 2}'
    handler.handle([{"body": body}, {"body": body}], ctx)
    assert ctx.status(0) == 400 and ctx.headers == {0: {"ts_stream_next": "false"}}

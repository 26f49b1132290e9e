"""TorchServe 0.12's gRPC API through a real client (grpcio), against the session's TorchServe.

What a gRPC client must know, pinned here: the tokens are checked (PERMISSION_DENIED), the handler's
per-request status is not carried (its 400 arrives as OK, with the JSON error in `prediction`), and
every Predictions call gets that 400, since no Content-Type reaches the handler over gRPC; and
StreamPredictions gets that refusal as one message (docs/serving.md, API). The stubs in tests/grpc_stubs/ were generated from the protos in
TorchServe's jar; test_the_stubs_match_the_protos_in_the_jar says when to generate them again.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import grpc
import pytest
import ts
from google.protobuf import empty_pb2

from tests.grpc_stubs import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc

STUBS = Path(__file__).parent / "grpc_stubs"
JAR = Path(ts.__file__).parent / "frontend" / "model-server.jar"
TOKEN_REFUSED = "Token Authorization failed"
NO_CONTENT_TYPE = {
    "error": "Content-Type must be application/json or application/vnd.apache.arrow.stream, got none",
    "model_version": "1.0",
}
PAIR = b'{"user_id": 1, "movie_id": 101}'


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a TorchServe token."""
    return (("authorization", f"Bearer {key}"),)


def refusal(call, *args, **kwargs) -> grpc.RpcError:
    """The error a gRPC call fails with; the test fails if the call succeeds."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=60, **kwargs)
    return caught.value


def predict(model: str, body: bytes, version: str = "") -> inference_pb2.PredictionsRequest:
    """A Predictions request with the body under "data", as TorchServe's own gRPC client sends it."""
    return inference_pb2.PredictionsRequest(model_name=model, model_version=version, input={"data": body})


def worker_pid(server) -> int:
    """The process id of movierec 1.0's (only) worker."""
    (v1,) = [v for v in server.describe("movierec") if v["modelVersion"] == "1.0"]
    return v1["workers"][0]["pid"]


@pytest.fixture(scope="module")
def inference(server) -> inference_pb2_grpc.InferenceAPIsServiceStub:
    """A client of the gRPC inference service."""
    with grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc_inference}") as channel:
        yield inference_pb2_grpc.InferenceAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def management(server) -> management_pb2_grpc.ManagementAPIsServiceStub:
    """A client of the gRPC management service."""
    with grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc_management}") as channel:
        yield management_pb2_grpc.ManagementAPIsServiceStub(channel)


@pytest.mark.parametrize("proto", ["inference.proto", "management.proto"])
def test_the_stubs_match_the_protos_in_the_jar(proto):
    """The committed proto is the installed TorchServe's; if not, regenerate (tests/grpc_stubs/README.md)."""
    with zipfile.ZipFile(JAR) as jar:
        assert jar.read(f"proto/{proto}") == (STUBS / proto).read_bytes()


@pytest.mark.integration
@pytest.mark.parametrize("kind", [None, "wrong", "management"])
def test_inference_without_the_inference_key_is_permission_denied(server, inference, kind):
    """No token, a wrong one, or the management key: PERMISSION_DENIED for Ping and Predictions alike."""
    metadata = () if kind is None else bearer(server.token(kind) if kind == "management" else "not-a-key")
    for call, request in ((inference.Ping, empty_pb2.Empty()), (inference.Predictions, predict("movierec", PAIR))):
        error = refusal(call, request, metadata=metadata)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert TOKEN_REFUSED in error.details()


@pytest.mark.integration
def test_ping_with_the_inference_key_is_healthy(server, inference):
    """Ping wants the inference key (like HTTP /ping) and answers TorchServe's health JSON."""
    answer = inference.Ping(empty_pb2.Empty(), metadata=bearer(server.token("inference")), timeout=60)
    assert json.loads(answer.health) == {"status": "Healthy"}


@pytest.mark.integration
def test_a_good_request_is_ok_with_the_content_type_400_in_its_body(server, inference, http):
    """A body HTTP answers 200 comes back gRPC OK holding the handler's 400 JSON: no Content-Type reached it.

    So over gRPC, OK means nothing: a client must parse `prediction` and check it for "error".
    """
    assert (
        http.post(
            f"{server.inference_url}/predictions/movierec", data=PAIR, headers={"Content-Type": "application/json"}
        ).status_code
        == 200
    )
    for version in ("", "2.0"):
        answer = inference.Predictions(predict("movierec", PAIR, version), metadata=bearer(server.token()), timeout=60)
        assert json.loads(answer.prediction) == NO_CONTENT_TYPE | {"model_version": version or "1.0"}
        assert not answer.HasField("status")


@pytest.mark.integration
@pytest.mark.parametrize("body", [b"{not json", b""])
def test_a_bad_body_gets_the_same_answer(server, inference, body):
    """The Content-Type check comes before the body is read: a broken or empty body gets the same OK + 400."""
    answer = inference.Predictions(predict("movierec", body), metadata=bearer(server.token()), timeout=60)
    assert json.loads(answer.prediction) == NO_CONTENT_TYPE


@pytest.mark.integration
@pytest.mark.parametrize(
    ("model", "version", "details"),
    [
        ("nosuch", "", "Model not found: nosuch"),
        ("movierec", "9.9", "Model version: 9.9 does not exist for model: movierec"),
    ],
)
def test_an_unknown_model_or_version_is_internal(server, inference, model, version, details):
    """TorchServe's own failures do carry a status, though not the HTTP one (404): INTERNAL, naming what is missing."""
    error = refusal(inference.Predictions, predict(model, PAIR, version), metadata=bearer(server.token()))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith(details)


@pytest.mark.integration
def test_stream_predictions_get_the_refusal_as_one_message_and_the_worker_lives(server, inference, http):
    """StreamPredictions: the same 400 JSON as one message, the stream ends OK, the worker is the same process.

    TorchServe 0.12's frontend reads the ts_stream_next response header for a stream and, without it,
    kills the worker; the handler sets it on every answer to a request without a Content-Type.
    """
    pid = worker_pid(server)
    stream = inference.StreamPredictions(predict("movierec", PAIR), metadata=bearer(server.token()), timeout=60)
    answers = [json.loads(message.prediction) for message in stream]
    assert answers == [NO_CONTENT_TYPE]
    assert worker_pid(server) == pid
    url = f"{server.inference_url}/predictions/movierec"
    assert http.post(url, data=PAIR, headers={"Content-Type": "application/json"}).status_code == 200


@pytest.mark.integration
def test_describe_model_wants_the_management_key(server, management):
    """DescribeModel answers TorchServe's describe JSON with the management key; the inference key is refused."""
    request = management_pb2.DescribeModelRequest(model_name="movierec")
    answer = management.DescribeModel(request, metadata=bearer(server.token("management")), timeout=60)
    assert [v["modelVersion"] for v in json.loads(answer.msg)] == ["1.0"]
    error = refusal(management.DescribeModel, request, metadata=bearer(server.token("inference")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.integration
def test_describe_of_an_unknown_model_is_not_found(server, management):
    """On the management service an unknown model is NOT_FOUND (Predictions says INTERNAL for the same)."""
    request = management_pb2.DescribeModelRequest(model_name="nosuch")
    error = refusal(management.DescribeModel, request, metadata=bearer(server.token("management")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.integration
def test_register_model_is_refused_with_the_management_key(server, management):
    """The model API is off: RegisterModel is PERMISSION_DENIED "Model API disabled" even with the right key."""
    request = management_pb2.RegisterModelRequest(url="movierec-1.0.mar", model_name="grpc-probe", initial_workers=1)
    error = refusal(management.RegisterModel, request, metadata=bearer(server.token("management")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("Model API disabled")
    assert "grpc-probe" not in server.models()

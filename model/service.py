"""The request pipeline: decode each body of a batch, answer them together, render each answer.

A body's codec is chosen by its Content-Type (protocol.request_body): JSON (model/json_codec.py,
which documents the request shapes) or an Arrow IPC stream (model/arrow.py). Both decode into the
columnar Request of model/request.py, whose Scorer answers every request of the batch at once.
One bad request never affects the others in its batch, and a refused one is answered in JSON,
so every client can read why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from model.arrow import ArrowCodec
from model.json_codec import JsonCodec
from model.protocol import MAX_INSTANCES, MAX_TOP_K, MAX_USERS, ArrowBody, Reply, RequestError, ServiceOptions
from model.request import Request, Scorer

if TYPE_CHECKING:
    from model.core import Recommender


class RatingService:
    """Turns a batch of raw request bodies into replies, scoring the pairs of its JSON bodies in one forward pass."""

    def __init__(
        self,
        recommender: Recommender,
        model_version: str,
        max_instances: int = MAX_INSTANCES,
        max_top_k: int = MAX_TOP_K,
        max_users: int = MAX_USERS,
        cold_start: str = "error",
    ):
        self.rec = recommender
        self.scorer = Scorer(recommender, cold_start)
        self.users, self.movies = recommender.artifact.users, recommender.artifact.movies
        self.model_version = model_version
        options = ServiceOptions(max_instances=max_instances, max_top_k=max_top_k, max_users=max_users)
        self.json = JsonCodec(self.scorer, model_version, options)
        self.arrow = ArrowCodec(self.scorer, model_version, options)

    def handle_batch(self, bodies: list[object]) -> list[Reply]:
        """Answer every request body of a batch (JSON, or an ArrowBody); never raises for a bad request."""
        requests = self.parse(bodies)
        self.infer(requests)
        return self.render(requests)

    def parse(self, bodies: list[object]) -> list[Request | RequestError]:
        """Decode each body into a Request with its codec; a refused body becomes its RequestError."""
        requests = []
        for body in bodies:
            try:
                requests.append(self.arrow.decode(body.data) if type(body) is ArrowBody else self.json.decode(body))
            except RequestError as exc:
                # A fresh error, not the caught one: its traceback holds this frame, whose locals hold
                # the batch's bodies, and that cycle waited for a full GC (rare after gc.freeze()): the
                # worker grew by ~4 KB per refused request under the soak.
                requests.append(RequestError(exc.status, str(exc)))
        return requests

    def infer(self, requests: list[Request | RequestError]) -> None:
        """Score or rank every decoded request of the batch."""
        self.scorer.answer(requests)

    def render(self, requests: list[Request | RequestError]) -> list[Reply]:
        """Each request's answer, written by its codec; a refusal as a JSON error."""
        return [req.render(req) if type(req) is Request else self._refusal(req) for req in requests]

    def answer_arrow(self, body: bytes) -> bytes:
        """The Arrow answer to one Arrow body; raises the RequestError of a body it refuses."""
        req = self.arrow.decode(body)
        self.infer([req])
        return req.render(req).body

    def _refusal(self, error: RequestError) -> Reply:
        """A refused request's JSON error answer."""
        return Reply(error.status, orjson.dumps({"error": str(error), "model_version": self.model_version}))

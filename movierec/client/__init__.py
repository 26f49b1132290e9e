"""Client for the movierec TorchServe deployment: inference, batch scoring, all-users top-K, versions and A/B tests."""

from movierec.client.ab import ABRouter, ArmStats, Decision, PairedEval, decide, evaluate, evaluate_paired
from movierec.client.api import (
    AuthError,
    ConfigError,
    Endpoints,
    MovieRecClient,
    MovieRecError,
    NotFound,
    ServerError,
    ServerUnreachable,
)
from movierec.client.exposures import ExposureLog, join_outcomes, read_exposures
from movierec.client.recommend_all import RecommendOptions, RecommendSummary
from movierec.client.scoring import (
    BatchSettings,
    InputError,
    ScoreSummary,
    score_csv,
    score_file,
)
from movierec.client.versions import list_versions, promote, rollback

__all__ = [
    "ABRouter",
    "ArmStats",
    "AuthError",
    "BatchSettings",
    "ConfigError",
    "Decision",
    "Endpoints",
    "ExposureLog",
    "InputError",
    "MovieRecClient",
    "MovieRecError",
    "NotFound",
    "PairedEval",
    "RecommendOptions",
    "RecommendSummary",
    "ScoreSummary",
    "ServerError",
    "ServerUnreachable",
    "decide",
    "evaluate",
    "evaluate_paired",
    "join_outcomes",
    "list_versions",
    "promote",
    "read_exposures",
    "rollback",
    "score_csv",
    "score_file",
]

"""Client for the movierec TorchServe deployment: inference, batch scoring, all-users top-K, versions and A/B tests."""

from movierec.client.ab import ABRouter, ArmStats, Decision, decide, evaluate
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
    "InputError",
    "MovieRecClient",
    "MovieRecError",
    "NotFound",
    "RecommendOptions",
    "RecommendSummary",
    "ScoreSummary",
    "ServerError",
    "ServerUnreachable",
    "decide",
    "evaluate",
    "list_versions",
    "promote",
    "rollback",
    "score_csv",
    "score_file",
]

"""Client for the movierec TorchServe deployment: inference, batch scoring, all-users top-K, versions and A/B tests."""

from __future__ import annotations

from movierec.lazy import lazy_exports

# Each name is imported from its module on first use (movierec.lazy).
_HOMES = {
    "ABRouter": "movierec.client.ab",
    "ArmStats": "movierec.client.ab",
    "Decision": "movierec.client.ab",
    "PairedEval": "movierec.client.ab",
    "decide": "movierec.client.ab",
    "evaluate": "movierec.client.ab",
    "evaluate_paired": "movierec.client.ab",
    "AuthError": "movierec.client.api",
    "ConfigError": "movierec.client.api",
    "Endpoints": "movierec.client.api",
    "MovieRecClient": "movierec.client.api",
    "MovieRecError": "movierec.client.api",
    "NotFound": "movierec.client.api",
    "ServerError": "movierec.client.api",
    "ServerUnreachable": "movierec.client.api",
    "ExposureLog": "movierec.client.exposures",
    "join_outcomes": "movierec.client.exposures",
    "read_exposures": "movierec.client.exposures",
    "RecommendOptions": "movierec.client.recommend_all",
    "RecommendSummary": "movierec.client.recommend_all",
    "BatchJob": "movierec.client.batch",
    "BatchSettings": "movierec.client.batch",
    "InputError": "movierec.client.columnar",
    "ScoreSummary": "movierec.client.score_job",
    "score_csv": "movierec.client.scoring",
    "score_file": "movierec.client.scoring",
    "list_versions": "movierec.client.versions",
    "promote": "movierec.client.versions",
    "rollback": "movierec.client.versions",
}

__all__ = sorted(_HOMES)


__getattr__, __dir__ = lazy_exports(globals(), _HOMES)

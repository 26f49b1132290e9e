"""Client for the movierec TorchServe deployment: inference, batch scoring, all-users top-K, versions and A/B tests."""

from __future__ import annotations

import importlib
from typing import Any

# Each name is imported from its module on first use, so importing one submodule (a command line's
# --help, say) loads only what that submodule needs.
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
    "BatchSettings": "movierec.client.scoring",
    "InputError": "movierec.client.scoring",
    "ScoreSummary": "movierec.client.scoring",
    "score_csv": "movierec.client.scoring",
    "score_file": "movierec.client.scoring",
    "list_versions": "movierec.client.versions",
    "promote": "movierec.client.versions",
    "rollback": "movierec.client.versions",
}

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


def __getattr__(name: str) -> Any:
    """Load a public name from its home module when it is first asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The loaded names and the ones __getattr__ can load."""
    return sorted([*globals(), *_HOMES])

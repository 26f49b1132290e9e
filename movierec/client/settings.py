"""What the client's bulk jobs and A/B comparisons do by default: shared by the jobs and their command line.

Standard library only (model.protocol needs just orjson), so `movierec --help` shows these without loading
pandas, pyarrow or numpy.
"""

from __future__ import annotations

from model.protocol import MAX_INSTANCES
from movierec.defaults import BATCH_MODEL as BATCH_MODEL  # the registration bulk jobs score through

# movierec score
DEFAULT_CHUNK = 5000  # JSON bodies
# Arrow bodies: the server's cap; 20,000-row bodies scored a 1M-row CSV ~1.5x faster than 5,000-row ones.
DEFAULT_ARROW_CHUNK = MAX_INSTANCES
DEFAULT_CONCURRENCY = 8
DEFAULT_WORKERS = 2
DEFAULT_IDLE_WORKERS = 0
PROTOCOLS = ("arrow", "json")
DEFAULT_PROTOCOL = "arrow"
# "predictions": TorchServe's /predictions/{model}[/{version}]; "v1": its KServe v1 /v1/models/{model}:predict.
ROUTES = ("predictions", "v1")
DEFAULT_ROUTE = "predictions"

# movierec recommend-all, and ab-eval's top-K requests
DEFAULT_USERS_PER_REQUEST = 500

# movierec promote, rollback and ab-eval --promote
STATE_FILE_NAME = "ab_state.json"  # the A/B state file's name, next to the key file unless --state-file

# movierec ab-eval and ab-report
DEFAULT_EVAL_CHUNK = 500
DEFAULT_EVAL_CONCURRENCY = 4
DEFAULT_SEED = 0
DEFAULT_REPS = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_MIN_ROWS = 500
DEFAULT_MIN_IMPROVEMENT = 0.005
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01

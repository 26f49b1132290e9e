"""The deployment's names and defaults, stated once: ports, run directory, model names, archive file names.

Standard library only, so a command line can show them in its --help without loading anything heavy.
The Makefile keeps its own copies (VERSION, RUN_DIR, the ports ...); tests/test_defaults.py checks they agree.
"""

from __future__ import annotations

HOST = "127.0.0.1"
# The five loopback ports of one TorchServe instance (config.properties and `movierec-serve start`).
INFERENCE_PORT = 8080
MANAGEMENT_PORT = 8081
METRICS_PORT = 8082
GRPC_INFERENCE_PORT = 7070
GRPC_MANAGEMENT_PORT = 7071
INFERENCE_URL = f"http://{HOST}:{INFERENCE_PORT}"
MANAGEMENT_URL = f"http://{HOST}:{MANAGEMENT_PORT}"

RUN_DIR = "run"  # the instance directory of `movierec-serve` (pid, rendered config, logs, key file)
KEY_FILE_NAME = "key_file.json"  # where TorchServe writes its tokens inside a run dir
KEY_FILE = f"{RUN_DIR}/{KEY_FILE_NAME}"
MODEL_STORE = "model_store"
VERSION = "1.0"  # the version `make mar` builds

MODEL = "movierec"  # the model name of every archive, and the latency registration
BATCH_MODEL = "movierec-batch"  # the bulk-scoring registration of the same archives
ARCHIVE_PREFIX = MODEL

# The clients' environment variables for the three settings above.
ENV_INFERENCE_URL = "MOVIEREC_INFERENCE_URL"
ENV_MANAGEMENT_URL = "MOVIEREC_MANAGEMENT_URL"
ENV_KEY_FILE = "MOVIEREC_KEY_FILE"


def archive_file(version: str) -> str:
    """File name of a version's archive in a model store: movierec-VERSION.mar."""
    return f"{ARCHIVE_PREFIX}-{version}.mar"


def package_version() -> str:
    """The installed movierec package's version."""
    from importlib.metadata import version

    return version("movierec")

"""Where the repository's own files live: the project is installed editable from its checkout."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_PROPERTIES = REPO / "config.properties"
MODEL_CONFIG = REPO / "handler" / "model-config.yaml"
HANDLER = REPO / "handler" / "movierec_handler.py"

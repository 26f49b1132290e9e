"""One home per deployment fact: the Makefile's and config.properties' copies agree with movierec.defaults."""

from __future__ import annotations

import re

from model.protocol import DEFAULT_TOP_K
from movierec import defaults
from movierec.paths import CONFIG_PROPERTIES, REPO
from movierec.torchserve.config import Ports
from movierec.torchserve.properties import read_properties


def makefile_defaults() -> dict[str, str]:
    """The Makefile's `NAME ?= value` and `NAME := value` lines, $(VAR) references to earlier ones expanded."""
    found: dict[str, str] = {}
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Z_]+)\s*[?:]=\s*(.*?)\s*$", line)
        if m and all(ref in found for ref in re.findall(r"\$\(([A-Z_]+)\)", m[2])):
            found[m[1]] = re.sub(r"\$\(([A-Z_]+)\)", lambda ref: found[ref[1]], m[2])
    return found


def test_makefile_defaults_agree_with_the_python_home():
    make = makefile_defaults()
    assert make["VERSION"] == defaults.VERSION
    assert make["RUN_DIR"] == defaults.RUN_DIR
    assert make["MODEL_STORE"] == defaults.MODEL_STORE
    assert make["TOP_K"] == str(DEFAULT_TOP_K)
    assert make["MODELS"] == f"{defaults.MODEL}={defaults.archive_file(defaults.VERSION)}"
    assert make["MAR"] == f"{defaults.MODEL_STORE}/{defaults.archive_file(defaults.VERSION)}"
    ports = {name: make[f"{name.upper()}_PORT"] for name in Ports.__dataclass_fields__}
    assert {name: int(port) for name, port in ports.items()} == vars(Ports())


def test_config_properties_listens_where_the_defaults_say():
    props = read_properties(CONFIG_PROPERTIES)
    assert props["inference_address"] == defaults.INFERENCE_URL
    assert props["management_address"] == defaults.MANAGEMENT_URL
    assert props["metrics_address"] == f"http://{defaults.HOST}:{defaults.METRICS_PORT}"
    assert int(props["grpc_inference_port"]) == defaults.GRPC_INFERENCE_PORT
    assert int(props["grpc_management_port"]) == defaults.GRPC_MANAGEMENT_PORT

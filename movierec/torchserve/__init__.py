"""Running and talking to TorchServe: config, lifecycle, health and the management API.

properties (java.util.Properties files) -> config (ports, rendered config.properties, snapshots)
-> processes (launch and end the OS processes) -> instance (Server, start/stop/running/health)
-> cli (movierec-serve). registry decides which store archives an instance serves. management (the API client with key renewal) and errors stand apart;
archive builds the .mar and reads its model config.
"""

from movierec.torchserve.cli import main
from movierec.torchserve.config import (
    DEFAULT_CONFIG,
    HOST,
    Ports,
    free_ports,
    latest_snapshot,
    render_config,
)
from movierec.torchserve.errors import ServeError
from movierec.torchserve.instance import Server, health, launch, reload, running, start, stop, wait_ready
from movierec.torchserve.management import ManagementClient
from movierec.torchserve.processes import MAX_TMPDIR_LEN, torchserve_env
from movierec.torchserve.properties import read_properties, write_properties

__all__ = [
    "DEFAULT_CONFIG",
    "HOST",
    "MAX_TMPDIR_LEN",
    "ManagementClient",
    "Ports",
    "ServeError",
    "Server",
    "free_ports",
    "health",
    "latest_snapshot",
    "launch",
    "main",
    "read_properties",
    "reload",
    "render_config",
    "running",
    "start",
    "stop",
    "torchserve_env",
    "wait_ready",
    "write_properties",
]

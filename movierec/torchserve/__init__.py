"""Running and talking to TorchServe: config, lifecycle, health and the management API.

properties (java.util.Properties files) -> config (ports, rendered config.properties, snapshots)
-> processes (launch and end the OS processes) -> instance (Server, start/stop/running/health)
-> cli (movierec-serve). registry decides which store archives an instance serves, and vetting loads
new ones outside the server first. management (the API client with key renewal) and errors stand apart;
archive builds the .mar and reads its model config.
"""

from __future__ import annotations

from movierec.lazy import lazy_exports

# Each name is imported from its module on first use (movierec.lazy).
_HOMES = {
    "main": "movierec.torchserve.cli",
    "DEFAULT_CONFIG": "movierec.torchserve.config",
    "HOST": "movierec.torchserve.config",
    "Ports": "movierec.torchserve.config",
    "free_ports": "movierec.torchserve.config",
    "latest_snapshot": "movierec.torchserve.config",
    "render_config": "movierec.torchserve.config",
    "ServeError": "movierec.torchserve.errors",
    "Server": "movierec.torchserve.instance",
    "health": "movierec.torchserve.instance",
    "launch": "movierec.torchserve.instance",
    "reload": "movierec.torchserve.instance",
    "running": "movierec.torchserve.instance",
    "start": "movierec.torchserve.instance",
    "stop": "movierec.torchserve.instance",
    "wait_ready": "movierec.torchserve.instance",
    "ManagementClient": "movierec.torchserve.management",
    "MAX_TMPDIR_LEN": "movierec.torchserve.processes",
    "torchserve_env": "movierec.torchserve.processes",
    "read_properties": "movierec.torchserve.properties",
    "write_properties": "movierec.torchserve.properties",
}

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


__getattr__, __dir__ = lazy_exports(globals(), _HOMES)

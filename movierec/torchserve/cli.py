"""Start, stop and inspect a local TorchServe instance that serves movierec (`movierec-serve`).

`movierec-serve start|reload|stop|status|health --help` for the command line; `python serve.py` is an alias.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from movierec.defaults import MODEL_STORE, RUN_DIR
from movierec.flags import add_version_option
from movierec.torchserve.config import DEFAULT_CONFIG, Ports, latest_snapshot
from movierec.torchserve.errors import MovieRecError, ServeError

if TYPE_CHECKING:
    from movierec.torchserve.instance import Server


def _print_status(server: Server | None, run_dir: Path) -> int:
    """Print what runs from RUN_DIR and the archives its checks refused; exit status 0 if running, 3 if not (LSB style)."""
    from movierec.torchserve.instance import leftovers
    from movierec.torchserve.vetting import refusals

    def print_refused() -> None:
        for refused in refusals(run_dir):
            print(f"refused {refused.file} at {refused.time}: {refused.reason}")

    if server is None:
        left = leftovers(run_dir)
        hint = f"; {left} leftover processes, run stop" if left else ""
        print(f"not running ({run_dir}){hint}")
        print_refused()
        return 3
    print(f"running  pid {server.pid}  run dir {server.run_dir}")
    print(f"inference  {server.inference_url}")
    print(f"management {server.management_url}")
    print(f"metrics    {server.metrics_url}")
    print(f"tokens     {server.key_file}")
    with server.client() as api:
        for model in api.list_models():
            name = model["modelName"]
            default = api.default_version(name)
            for info in api.describe(name):
                states = ",".join(w["status"] for w in info.get("workers", [])) or "no workers"
                mark = " (default)" if info["modelVersion"] == default else ""
                print(f"model {name} {info['modelVersion']}{mark}: {states}")
    print_refused()
    return 0


def _parser() -> argparse.ArgumentParser:
    """The movierec-serve command line."""
    parser = argparse.ArgumentParser(prog="movierec-serve", description=__doc__.splitlines()[0])
    add_version_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = Ports()

    p_start = sub.add_parser("start", help="start TorchServe and wait for READY workers")
    p_start.add_argument("--run-dir", default=RUN_DIR, help="instance directory (default: %(default)s)")
    p_start.add_argument("--model-store", default=MODEL_STORE, help="directory of .mar files (default: %(default)s)")
    p_start.add_argument(
        "--models",
        help="NAME=FILE.mar,... to serve when RUN_DIR has no snapshot yet (or with --fresh); "
        "otherwise every .mar in the model store",
    )
    p_start.add_argument(
        "--fresh",
        action="store_true",
        help="load --models even if RUN_DIR holds a snapshot (drops registered versions and the default)",
    )
    for field, port in asdict(defaults).items():
        flag = "--" + field.replace("_", "-") + "-port"
        p_start.add_argument(flag, dest=field, type=int, default=port, metavar="PORT", help=f"(default {port})")
    p_start.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config.properties")
    p_start.add_argument("--timeout", type=float, default=180, help="seconds to wait for READY")

    p_reload = sub.add_parser(
        "reload",
        help="restart on the same ports serving every .mar now in the model store (how versions are added "
        "or removed); defaults and worker counts are kept. New or changed archives are loaded outside the "
        "server first: if one fails, nothing restarts and the command exits 1 naming it",
    )
    p_reload.add_argument("--run-dir", default=RUN_DIR)
    p_reload.add_argument("--timeout", type=float, default=180, help="seconds to wait for READY")

    p_stop = sub.add_parser("stop", help="stop TorchServe and all its workers")
    p_stop.add_argument("--run-dir", default=RUN_DIR)
    p_stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")

    p_status = sub.add_parser("status", help="show whether TorchServe runs and its models")
    p_status.add_argument("--run-dir", default=RUN_DIR)

    p_health = sub.add_parser(
        "health",
        help="exit 0 if TorchServe answers /ping and every model has a READY worker, else 1 (for probes)",
    )
    p_health.add_argument("--run-dir", default=RUN_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the movierec-serve command line."""
    args = _parser().parse_args(argv)
    # requests, psutil and yaml: only once a command runs, so --help stays quick.
    from movierec.torchserve.instance import health, reload, running, start, stop

    run_dir = Path(args.run_dir).resolve()
    try:
        if args.command == "start":
            ports = Ports(*(getattr(args, f) for f in asdict(Ports())))
            models = args.models
            # A restart must keep every registered version and the chosen default, so a
            # snapshot wins over --models unless the caller asks for a fresh start.
            if models and not args.fresh and (snap := latest_snapshot(run_dir)) is not None:
                print(f"restoring {snap.name} (registered versions and default); --fresh loads {models} instead")
                models = None
            server = start(run_dir, args.model_store, models, ports, args.config, args.timeout)
            return _print_status(server, run_dir)
        if args.command == "reload":
            return _print_status(reload(run_dir, args.timeout), run_dir)
        if args.command == "stop":
            print("stopped" if stop(run_dir, args.timeout) else f"not running ({run_dir})")
            return 0
        if args.command == "health":
            problem = health(run_dir)
            print(f"unhealthy: {problem}" if problem else "healthy")
            return 1 if problem else 0
        return _print_status(running(run_dir), run_dir)
    except (ServeError, MovieRecError) as error:
        print(f"movierec-serve {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

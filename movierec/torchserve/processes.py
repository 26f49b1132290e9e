"""The operating-system side of a TorchServe instance: launch, find and end its processes.

An instance is the Java frontend the `torchserve` launcher forks, its Python workers and anything
they fork, all in the new session the launcher starts in. Its TMPDIR is private to the instance.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from movierec.torchserve.errors import ServeError

JAVA_MAIN = "org.pytorch.serve.ModelServer"
# The frontend also starts short-lived children (its system-metrics collector, once a minute).
WORKER_MAIN = "model_service_worker"
PID_FILE = ".model_server.pid"
# Worker sockets are TMPDIR/.ts.sock.<port>; AF_UNIX paths must stay under 108 bytes.
MAX_TMPDIR_LEN = 90
LOG_FILES = ("torchserve.out", "ts_log.log", "model_log.log")


def private_tmp_dir(run_dir: Path) -> Path:
    """A per-instance TMPDIR: it holds TorchServe's pid file, worker sockets and unpacked .mar."""
    tmp_dir = run_dir / "tmp"
    if len(str(tmp_dir)) > MAX_TMPDIR_LEN:
        raise ServeError(f"run dir path too long for worker sockets: {run_dir}")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir


def torchserve_env(tmp_dir: Path, logs: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of an instance: `base` (default os.environ) with its own TMPDIR and logs."""
    env = dict(os.environ if base is None else base)
    # TS_CONFIG_FILE would replace the config given on the command line; LOG_LOCATION would move
    # logs and snapshots away from the instance's directory.
    env.pop("TS_CONFIG_FILE", None)
    env.update(TMPDIR=str(tmp_dir), TEMP=str(tmp_dir), LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs))
    env.update(extra)
    return env


def launch(run_dir: Path, args: list[str], env: Mapping[str, str]) -> int:
    """Run `torchserve ARGS` from run_dir with env; return the Java frontend's pid.

    The launcher forks the frontend and exits; a new session keeps the frontend and its workers
    out of the caller's process group and terminal signals.
    """
    logs = Path(env["LOG_LOCATION"])
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "torchserve.out", "ab") as out:
        launcher = subprocess.run(
            [sys.executable, "-m", "ts.model_server", *args],
            cwd=run_dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=60,
        )
    if launcher.returncode != 0:
        raise ServeError(f"torchserve launcher failed\n{log_tail(logs)}")
    return int((Path(env["TMPDIR"]) / PID_FILE).read_text().split()[0])


def is_frontend(pid: int) -> bool:
    """Whether pid is (still) a TorchServe Java frontend, not a recycled pid."""
    try:
        return JAVA_MAIN in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def workers(pid: int) -> list[psutil.Process]:
    """The model workers of the frontend pid; none if it has gone."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if any(WORKER_MAIN in arg for arg in child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def instance_processes(pid: int, pgid: int, tmp_dir: str) -> list[psutil.Process]:
    """The frontend, its descendants and every process left in its process group."""
    procs: dict[int, psutil.Process] = {}
    if is_frontend(pid):
        frontend = psutil.Process(pid)
        procs[frontend.pid] = frontend
        for child in frontend.children(recursive=True):
            procs[child.pid] = child
    # While the frontend lives its process group is surely ours; after that, a member must
    # also name our private TMPDIR (frontend -Djava.io.tmpdir, worker socket paths).
    ours = bool(procs)
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or os.getpgid(proc.pid) != pgid:
                continue
            if ours or any(tmp_dir in arg for arg in proc.cmdline()):
                procs.setdefault(proc.pid, proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return list(procs.values())


def terminate(pid: int, pgid: int, tmp_dir: str, timeout: float = 30) -> list[psutil.Process]:
    """End an instance: SIGTERM, then SIGKILL after timeout; return the processes it had."""
    procs = instance_processes(pid, pgid, tmp_dir)
    frontend = [p for p in procs if p.pid == pid]
    # SIGTERM lets the frontend write its shutdown snapshot and stop its workers itself.
    for proc in frontend or procs:
        _signal(proc, signal.SIGTERM)
    alive = _wait_gone(procs, timeout)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _wait_gone(alive, 10)
    # Anything the workers forked is in the same process group.
    leftovers = instance_processes(pid, pgid, tmp_dir)
    for proc in leftovers:
        _signal(proc, signal.SIGKILL)
    _wait_gone(leftovers, 10)
    return procs


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes have exited; return those still running at the timeout."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    # An orphaned zombie only waits for init to reap it; it holds no ports or memory.
    return [p for p in alive if running(p)]


def running(proc: psutil.Process) -> bool:
    """Whether a process still runs; a zombie does not count."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    """Send a signal, ignoring processes that are already gone."""
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def check_ports_free(ports: Mapping[str, int], host: str) -> None:
    """Fail early, with the port named, if another process holds one of the ports."""
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                raise ServeError(f"{name} port {port} on {host} is in use") from None


def log_tail(logs: Path, lines: int = 40) -> str:
    """The last lines of an instance's logs, to show why it failed."""
    parts = []
    for name in LOG_FILES:
        path = logs / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs under {logs})"

"""Background services that real cluster runners need, started as separate processes.

`Services` starts a dask.distributed scheduler and workers (`python -m dask scheduler`,
`python -m dask worker`), Beam's local job service and Beam's external worker pool, each
in its own process group with its output in a log file, and stops every group it
started (SIGTERM, then SIGKILL) when the `with` block ends, whatever happened inside.
Each child also gets SIGTERM if the thread that started it dies (PR_SET_PDEATHSIG;
start services from the test's main thread), so a killed test run leaves no servers
behind.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 180
STOP_GRACE_S = 5
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # bound here: the forked child only calls it


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the process that started it dies."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env() -> dict[str, str]:
    """Environment whose `python` is this interpreter (Beam's worker pool starts SDK
    workers as `python -c ...` from PATH)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@dataclass
class Service:
    """One started process: its name, handle and log file."""

    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])


class Services:
    """Starts services under `workdir` and stops all of them on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Service] = []
        workdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, name: str, args: list[str]) -> Service:
        """Run `python args...` in its own session (process group), cwd = workdir."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, *args], cwd=self.workdir, env=python_env(),
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, preexec_fn=_die_with_parent)
        service = Service(name, process, log)
        self.started.append(service)
        return service

    def stop(self) -> None:
        """Stop the started process groups, last started first (dask workers before
        their scheduler, so they close without waiting for it): SIGTERM, and SIGKILL
        for what is left after a few seconds."""
        for service in reversed(self.started):
            _signal_group(service.process, signal.SIGTERM)
            try:
                service.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(service.process, signal.SIGKILL)
            service.process.wait()

    def logs(self) -> str:
        return "\n".join(s.tail() for s in self.started)

    def wait_for(self, what: str, ready, service: Service | None = None) -> None:
        """Poll `ready()` until true; RuntimeError (with the logs) on timeout or when
        `service` exits first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if service is not None and service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode} before "
                                   f"{what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def dask_cluster(self, n_workers: int) -> "DaskCluster":
        """Start a scheduler and `n_workers` single-threaded workers without nanny (a
        killed worker stays dead) on 127.0.0.1; workers wait for the scheduler file."""
        scheduler_file = self.workdir / "dask-scheduler.json"
        scheduler = self.start("dask-scheduler", [
            "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(scheduler_file)])
        cluster = DaskCluster(self, scheduler, scheduler_file, {})
        for i in range(n_workers):
            cluster.add_worker(f"worker-{i}")
        return cluster

    def job_service(self) -> "JobService":
        """Start Beam's local job service, keeping staged artifacts in a known folder."""
        port_file, staging = self.workdir / "job-service.port", self.workdir / "job-staging"
        service = self.start("job-service", [
            "-m", "apache_beam.runners.portability.local_job_service_main", "--port", "0",
            "--port_file", str(port_file), "--staging_dir", str(staging)])
        return JobService(self, service, port_file, staging)

    def worker_pool(self) -> "WorkerPool":
        """Start Beam's external worker pool: each SDK worker it is asked for is a new process."""
        port = free_port()
        service = self.start("worker-pool", [
            "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port)])
        return WorkerPool(self, service, port)


@dataclass
class DaskCluster:
    """A dask.distributed scheduler and its named workers."""

    services: Services
    scheduler: Service
    scheduler_file: Path
    workers: dict[str, Service]

    def client(self):
        from distributed import Client

        return Client(scheduler_file=str(self.scheduler_file), timeout=60)

    def add_worker(self, name: str) -> Service:
        worker = self.services.start(name, [
            "-m", "dask", "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
            "--nthreads", "1", "--no-nanny", "--name", name, "--no-dashboard",
            "--local-directory", str(self.services.workdir / name)])
        self.workers[name] = worker
        return worker

    def ready(self, n_workers: int) -> str:
        """Block until `n_workers` workers are connected; returns the scheduler address."""
        self.services.wait_for("the dask scheduler file", self.scheduler_file.is_file, self.scheduler)
        with self.client() as client:
            try:
                client.wait_for_workers(n_workers, timeout=READY_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(f"fewer than {n_workers} dask workers connected\n"
                                   f"{self.services.logs()}") from None
        return json.loads(self.scheduler_file.read_text())["address"]


@dataclass
class JobService:
    """Beam's local job service (runs portable jobs; keeps staged artifacts in `staging`)."""

    services: Services
    service: Service
    port_file: Path
    staging: Path

    def ready(self) -> str:
        """Block until it listens; returns its endpoint for --job_endpoint."""
        self.services.wait_for("the job service port file",
                               lambda: self.port_file.is_file() and self.port_file.read_text().strip(),
                               self.service)
        return f"localhost:{self.port_file.read_text().strip()}"


@dataclass
class WorkerPool:
    """Beam's external worker pool (starts SDK worker processes for EXTERNAL environments)."""

    services: Services
    service: Service
    port: int

    def ready(self) -> str:
        """Block until it listens; returns its address for --environment_config."""
        self.services.wait_for("the worker pool to listen", lambda: _listening(self.port), self.service)
        return f"localhost:{self.port}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group this module started (its leader is `process`)."""
    if process.poll() is None or sig == signal.SIGKILL:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass


def start_pipeline(args: list[str], log: Path) -> subprocess.Popen:
    """Start `python -m pipeline args...` in the checkout (so --setup_file ./setup.py
    works), its output going to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=python_env(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

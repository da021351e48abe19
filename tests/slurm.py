"""Pytest plugin: a real, throwaway single-node Slurm cluster for the ``lrstudy slurm`` tests.

Registered with ``-p tests.slurm``. The session starts munged, slurmctld and slurmd from
Debian's ``slurm-wlm`` and ``munge`` packages in a temporary folder, on
free ports, as root, without systemd or cgroups (``proctrack/linuxproc``, ``task/none``). The
node offers ``SlurmCluster.GPUS`` stand-in GPUs: character devices made with ``mknod`` and
named in ``gres.conf``, so that Slurm hands each job its own ``CUDA_VISIBLE_DEVICES`` as on a
GPU node. Without the binaries (or not as root) the Slurm tests skip, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.waiting import free_ports, wait_for

_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
# At least this many CPUs are declared, so that three one-CPU array tasks run side by side even
# on a two-core machine (the tests' tasks mostly wait on each other and on the database).
_MIN_CPUS = 4


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(path) for path in (Path("/usr/sbin") / name, Path("/sbin") / name) if path.is_file()),
        None,
    )


def missing_reason() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    missing = [name for name in (*_DAEMONS, *_CLIENTS, "mungekey") if _binary(name) is None]
    if missing:
        return (
            f"Slurm/munge binaries not found ({', '.join(missing)}); "
            "install Debian's slurm-wlm and munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        return "the throwaway Slurm cluster runs its daemons as root; run the tests as root"
    return None


class SlurmCluster:
    """munged + slurmctld + slurmd in a temporary folder; ``env`` points clients at it.

    Args:
        gpus: Stand-in GPUs the node offers as ``gres/gpu``. Defaults to `GPUS`.
    """

    GPUS = 2

    def __init__(self, *, gpus: int = GPUS) -> None:
        reason = missing_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.folder = Path(tempfile.mkdtemp(prefix="lrstudy-slurm-"))
        self.gpus = gpus
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pidfiles: list[Path] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # --- what the tests use -----------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        done = subprocess.run(
            list(argv),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def job_states(self, job: str) -> dict[str, str]:
        """{job id as squeue shows it (e.g. ``12_0``): state} of a job's tasks still known."""
        out = self.run("squeue", "-h", "-r", "-j", job, "-o", "%i %T", check=False)
        return dict(line.split(maxsplit=1) for line in out.splitlines() if " " in line)

    def job_field(self, job: str, field: str) -> str:
        """One ``Field=value`` of ``scontrol show job`` (e.g. ``JobState``, ``Restarts``)."""
        out = self.run("scontrol", "-o", "show", "job", job)
        match = re.search(rf"(?:^| ){re.escape(field)}=(\S*)", out)
        return match.group(1) if match else ""

    def wait_gone(self, job: str, timeout: float) -> None:
        """Wait until no task of ``job`` is pending, running or completing."""
        self._wait_for(lambda: not self.job_states(job), timeout, f"job {job} to leave the queue")

    def cancel_all(self) -> None:
        """Cancel every job of this cluster and wait (briefly) for them to leave."""
        jobs = self.run("squeue", "-h", "-o", "%A", check=False).split()
        if jobs:
            self.run("scancel", *jobs, check=False)
            with contextlib.suppress(RuntimeError):
                self._wait_for(lambda: not self.run("squeue", "-h", check=False).strip(), 40, "")

    def logs(self) -> str:
        """The tails of the daemons' logs, for failure messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Cancel the jobs, stop the daemons by their PID files and delete the folder."""
        if (self.folder / "slurmctld.pid").exists():
            with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
                self.cancel_all()
        for pidfile in reversed(self._pidfiles):  # slurmd, slurmctld, then munged
            _stop(pidfile)
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- start-up ---------------------------------------------------------------------------

    def _start(self) -> None:
        for name in ("state", "spool", "munge", "dev"):
            (self.folder / name).mkdir(mode=0o700)
        self.folder.chmod(0o755)  # jobs of any user may read slurm.conf
        self._start_munge()
        self._write_config()
        self._daemon("slurmctld", "-i")  # -i: ignore a missing or foreign state
        self._daemon("slurmd")
        self._wait_idle(timeout=60)

    def _start_munge(self) -> None:
        key = self.folder / "munge" / "munge.key"
        _check_call([_need("mungekey"), "--create", f"--keyfile={key}"])
        key.chmod(0o400)
        self.socket = self.folder / "munge" / "munge.socket"
        pidfile = self.folder / "munged.pid"
        _check_call([
            _need("munged"), "--force", f"--socket={self.socket}", f"--key-file={key}",
            f"--pid-file={pidfile}", f"--log-file={self.folder / 'munged.log'}",
            f"--seed-file={self.folder / 'munge' / 'munged.seed'}",
        ])  # fmt: skip
        self._pidfiles.append(pidfile)
        self._wait_for(self.socket.exists, 15, "munged to start")

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        node = _node_line()
        declared = max(_MIN_CPUS, int(_node_value(node, "CPUs") or 1))
        devices = []
        for index in range(self.gpus):
            device = self.folder / "dev" / f"gpu{index}"
            # A character device, as GPU device files are; 1,3 is /dev/null's, so harmless.
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            devices.append(device)
        gres = "".join(f"Name=gpu File={device}\n" for device in devices)
        (self.folder / "gres.conf").write_text("AutoDetect=off\n" + gres)
        memory = _node_value(node, "RealMemory") or "1000"
        f = self.folder
        controller_port, node_port = free_ports(2)
        self.conf.write_text(
            f"""\
# Written by tests/slurm.py: a throwaway single-node cluster, no systemd, no cgroups.
ClusterName=lrstudy-{secrets.token_hex(3)}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={f / "state"}
SlurmdSpoolDir={f / "spool"}
SlurmctldPidFile={f / "slurmctld.pid"}
SlurmdPidFile={f / "slurmd.pid"}
SlurmctldLogFile={f / "slurmctld.log"}
SlurmdLogFile={f / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=30
MinJobAge=600
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={declared} RealMemory={memory} Gres=gpu:{self.gpus} \
State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        )

    def _daemon(self, name: str, *args: str) -> None:
        pidfile = self.folder / f"{name}.pid"
        log = self.folder / f"{name}.log"
        done = subprocess.run(
            [_need(name), "-f", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed to start: {done.stderr.strip()}\n{self.logs()}")
        self._pidfiles.append(pidfile)
        self._wait_for(pidfile.exists, 30, f"{name} to write its PID file ({log})")

    def _wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            return out.strip().rstrip("*") == "idle"

        self._wait_for(idle, timeout, "the node to become idle")

    def _wait_for(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """``wait_for`` that shows the daemons' logs as they are when it gives up."""
        try:
            wait_for(ready, timeout_s, what, poll_s=0.25)
        except AssertionError as error:
            raise RuntimeError(f"{error}\n{self.logs()}") from None


def _need(name: str) -> str:
    path = _binary(name)
    if path is None:
        raise RuntimeError(f"{name} not found")
    return path


def _node_line() -> str:
    """This machine's ``NodeName=...`` line as ``slurmd -C`` prints it."""
    out = subprocess.run(
        [_need("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return next((line for line in out.splitlines() if line.startswith("NodeName=")), "")


def _node_value(line: str, key: str) -> str | None:
    match = re.search(rf"\b{key}=(\S+)", line)
    return match.group(1) if match else None


def _check_call(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stderr.strip()}")


def _stop(pidfile: Path) -> None:
    """TERM the daemon of a PID file, KILL it if it lingers."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a daemon we started is a zombie of ours until reaped
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the throwaway Slurm cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the cluster, so that ``-m 'not slurm'`` leaves them out."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The session's cluster; ``SLURM_CONF`` points this process's clients at it meanwhile."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: Slurm tests must not be skipped)")
        pytest.skip(reason)
    cluster = _started()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        _restore("SLURM_CONF", previous)
        cluster.close()


def _started(tries: int = 3) -> SlurmCluster:
    """A running cluster; started again, in a fresh folder on fresh ports, should a start fail
    (another process may take a probed port before the daemon binds it)."""
    for attempt in range(tries):
        try:
            return SlurmCluster()
        except RuntimeError as error:
            if attempt == tries - 1 or "already in use" not in str(error):
                raise  # only a port taken since the probe is worth another start
            warnings.warn(
                f"the Slurm cluster did not start; starting it again: {error}", stacklevel=2
            )
    raise AssertionError("tries must be at least 1")


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value

"""The launcher: slot planning, real worker processes, prefixed logs, restarts and signals."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage import open_storage
from study import _exit
from study.grid import create_grid_study
from study.launch import (
    LAUNCHER_ENV,
    GpuSample,
    Slot,
    UsageWatch,
    find_gpus,
    launch,
    parse_smi_indices,
    parse_smi_usage,
    plan_slots,
    underuse_advice,
)
from study.results import progress_line
from tests.postgres import PostgresServer
from trainer import InputError

ROOT = Path(__file__).resolve().parents[3]


def gpus(*indices: str):
    return lambda: list(indices)


def test_cpu_workers_get_one_slot_each() -> None:
    slots = plan_slots(workers=3, available=gpus("0"))
    assert [slot.label for slot in slots] == ["w1 cpu", "w2 cpu", "w3 cpu"]


def test_gpu_slots_pin_one_gpu_each_and_share_with_per_gpu() -> None:
    slots = plan_slots(gpus="0,3", per_gpu=2, available=gpus("0", "1", "2", "3"))
    assert [slot.label for slot in slots] == ["w1 gpu0", "w2 gpu0", "w3 gpu3", "w4 gpu3"]
    assert [slot.environment({})["CUDA_VISIBLE_DEVICES"] for slot in slots] == [
        "0",
        "0",
        "3",
        "3",
    ]
    assert [s.label for s in plan_slots(gpus="all", available=gpus("0", "1"))] == [
        "w1 gpu0",
        "w2 gpu1",
    ]


def test_without_flags_all_gpus_else_one_cpu_worker() -> None:
    assert [s.label for s in plan_slots(available=gpus("0", "1"))] == ["w1 gpu0", "w2 gpu1"]
    assert [s.label for s in plan_slots(available=gpus())] == ["w1 cpu"]
    assert Slot(1).environment({"CUDA_VISIBLE_DEVICES": "0"})["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"gpus": "0,2", "available": gpus("0", "1")},
            r"--gpus names GPU 2, which does not exist",
        ),
        ({"gpus": "all", "available": gpus()}, r"--gpus all found no GPU.*--workers N"),
        ({"gpus": "0", "available": gpus()}, r"GPU 0, which does not exist; this machine has no"),
        ({"gpus": "first", "available": gpus("0")}, r"--gpus must be 'all', positions like"),
        ({"gpus": "0,0", "available": gpus("0")}, r"--gpus lists a GPU twice.*--per-gpu"),
        ({"gpus": "0", "per_gpu": 0, "available": gpus("0")}, r"--per-gpu must be .*got 0"),
        ({"workers": 0}, r"--workers must be an integer >= 1; got 0"),
        ({"gpus": "0", "workers": 2, "available": gpus("0")}, r"exclude each other"),
    ],
)
def test_bad_slot_requests_are_input_errors(kwargs: dict, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        plan_slots(**kwargs)


@pytest.fixture(autouse=True)
def no_inherited_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests name their pool; one inherited from the machine running them must not leak in."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_an_inherited_cuda_visible_devices_is_the_pool() -> None:
    # A user given GPUs 4 and 5 of an 8-GPU server takes those two, never all eight.
    given = {"CUDA_VISIBLE_DEVICES": "4,5"}
    eight = gpus(*map(str, range(8)))
    assert [s.gpu for s in plan_slots(gpus="all", available=eight, environ=given)] == ["4", "5"]
    assert [s.gpu for s in plan_slots(available=eight, environ=given)] == ["4", "5"]
    assert [s.gpu for s in plan_slots(gpus="1", available=eight, environ=given)] == ["5"]
    with pytest.raises(InputError, match=r"GPU 2, which does not exist; the pool is .*=4,5"):
        plan_slots(gpus="2", available=eight, environ=given)
    none = {"CUDA_VISIBLE_DEVICES": ""}
    assert [s.label for s in plan_slots(available=eight, environ=none)] == ["w1 cpu"]
    with pytest.raises(InputError, match=r"found no GPU \(CUDA_VISIBLE_DEVICES='' names none\)"):
        plan_slots(gpus="all", available=eight, environ=none)
    # As CUDA reads it, the list ends at an entry that is no GPU: -1 hides them all.
    for hidden in ("-1", "NoDevFiles", "-1,0"):
        assert plan_slots(available=eight, environ={"CUDA_VISIBLE_DEVICES": hidden}) == [Slot(1)]
    pool = {"CUDA_VISIBLE_DEVICES": "3,-1,5"}
    assert [s.gpu for s in plan_slots(gpus="all", available=eight, environ=pool)] == ["3"]


def test_gpu_and_mig_uuids_are_accepted() -> None:
    given = {"CUDA_VISIBLE_DEVICES": "GPU-1f2e,MIG-7a8b"}
    slots = plan_slots(gpus="all", per_gpu=2, available=gpus(), environ=given)
    assert [s.gpu for s in slots] == ["GPU-1f2e", "GPU-1f2e", "MIG-7a8b", "MIG-7a8b"]
    assert slots[2].environment({})["CUDA_VISIBLE_DEVICES"] == "MIG-7a8b"
    assert [s.gpu for s in plan_slots(gpus="MIG-7a8b", available=gpus(), environ=given)] == [
        "MIG-7a8b"
    ]
    with pytest.raises(InputError, match="GPU-0000, which is not ours"):
        plan_slots(gpus="GPU-0000", available=gpus(), environ=given)
    with pytest.raises(InputError, match="GPU-0000, which is not ours"):  # an empty pool too
        plan_slots(gpus="GPU-0000", available=gpus(), environ={"CUDA_VISIBLE_DEVICES": ""})
    # Without an inherited pool a UUID is passed on as given: CUDA checks it.
    assert [s.gpu for s in plan_slots(gpus="GPU-9c", available=gpus("0"), environ={})] == [
        "GPU-9c"
    ]


def test_workers_sharing_a_gpu_get_a_memory_share_under_both_backends() -> None:
    slots = plan_slots(
        gpus="0", per_gpu=4, available=gpus("0"), environ={}, memory=lambda g: 80000
    )
    env = slots[0].environment({})
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.212"  # JAX: 0.85 / 4 of the GPU
    assert env["LRSTUDY_TF_GPU_MEMORY_MB"] == str(int(0.2125 * 80000))  # TensorFlow: as MiB
    unknown = plan_slots(
        gpus="0", per_gpu=2, available=gpus("0"), environ={}, memory=lambda g: None
    )
    assert "LRSTUDY_TF_GPU_MEMORY_MB" not in unknown[0].environment({})  # growth only
    alone = plan_slots(gpus="0", available=gpus("0"), environ={}, memory=lambda g: 80000)
    assert "LRSTUDY_TF_GPU_MEMORY_MB" not in alone[0].environment({})


def test_gpu_slots_use_pci_bus_order_and_are_marked() -> None:
    env = Slot(1, "3").environment({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("3", "PCI_BUS_ID")
    assert env["LRSTUDY_GPU_SLOT"] == "3"
    assert "LRSTUDY_GPU_SLOT" not in Slot(2).environment(env)


def test_nvidia_smi_output_is_parsed() -> None:
    assert parse_smi_indices("0\n1\n\n3\n") == ["0", "1", "3"]
    assert parse_smi_indices("No devices were found\n") == []


def test_this_machines_gpus_are_found_or_all_is_refused() -> None:
    found = find_gpus()
    assert all(index.isdigit() for index in found)
    if not found:
        with pytest.raises(InputError, match="--gpus all found no GPU"):
            plan_slots(gpus="all")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_workers_run_with_their_gpu_and_their_output_prefixed() -> None:
    out = io.StringIO()
    code = """
        import os, sys
        print("sees", repr(os.environ["CUDA_VISIBLE_DEVICES"]))
        print("to stderr", file=sys.stderr)
    """
    slots = [Slot(1, "0"), Slot(2, "1"), Slot(3)]
    summary = launch(slots, lambda slot: python(code), out=out)
    lines = out.getvalue().splitlines()
    assert "[w1 gpu0] sees '0'" in lines
    assert "[w2 gpu1] sees '1'" in lines
    assert "[w3 cpu] sees ''" in lines
    assert sum(line.endswith("] to stderr") for line in lines) == 3
    assert summary.clean
    assert [(o.slot.label, o.returncode, o.restarts) for o in summary.outcomes] == [
        ("w1 gpu0", 0, 0),
        ("w2 gpu1", 0, 0),
        ("w3 cpu", 0, 0),
    ]


MEMORY_KEYS = (
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "TF_CPP_MIN_LOG_LEVEL",
)


def _environments(slots: list[Slot], base: dict[str, str]) -> dict[str, dict]:
    """What each worker process really saw of MEMORY_KEYS, by slot label."""
    out = io.StringIO()
    code = f"""
        import json, os
        print("ENV", json.dumps({{k: os.environ.get(k) for k in {MEMORY_KEYS!r}}}))
    """
    assert launch(slots, lambda slot: python(code), env=base, out=out).clean
    seen = {}
    for line in out.getvalue().splitlines():
        label, _, rest = line.partition("] ENV ")
        if rest:
            seen[label.lstrip("[")] = json.loads(rest)
    return seen


def test_workers_sharing_a_gpu_get_a_memory_share_and_quiet_tensorflow() -> None:
    base = {"PATH": os.environ["PATH"]}
    slots = [*plan_slots(gpus="0", per_gpu=4, available=gpus("0")), Slot(5)]
    seen = _environments(slots, base)
    for label in ("w1 gpu0", "w2 gpu0", "w3 gpu0", "w4 gpu0"):
        assert seen[label] == {
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.212",  # 0.85 of the memory, shared by 4
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    assert seen["w5 cpu"] == {
        "TF_FORCE_GPU_ALLOW_GROWTH": None,
        "XLA_PYTHON_CLIENT_PREALLOCATE": None,
        "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def test_a_gpu_of_its_own_grows_memory_uncapped_and_user_settings_win() -> None:
    base = {"PATH": os.environ["PATH"], "TF_CPP_MIN_LOG_LEVEL": "0"}
    seen = _environments(plan_slots(gpus="0", available=gpus("0")), base)
    assert seen["w1 gpu0"] == {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
        "TF_CPP_MIN_LOG_LEVEL": "0",
    }
    base["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.3"
    seen = _environments(plan_slots(gpus="0", per_gpu=2, available=gpus("0")), base)
    assert seen["w2 gpu0"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3"


SMI_USAGE = """\
0, 31, 5120, 81559
1, 97, 70000, 81559
2, [N/A], 100, 81559
"""


def test_nvidia_smi_usage_is_parsed_and_unreadable_lines_skipped() -> None:
    assert parse_smi_usage(SMI_USAGE) == [
        GpuSample("0", 31.0, 5120.0, 81559.0),
        GpuSample("1", 97.0, 70000.0, 81559.0),
    ]
    assert parse_smi_usage("No devices were found\n") == []


def test_advice_only_for_an_idle_gpu_with_memory_to_spare() -> None:
    samples = [
        GpuSample("0", 30.0, 6000.0, 80000.0),
        GpuSample("0", 50.0, 8000.0, 80000.0),
        GpuSample("1", 40.0, 50000.0, 80000.0),  # idle, but twice its memory does not fit
        GpuSample("2", 75.0, 4000.0, 80000.0),  # busy enough
    ]
    workers = {"0": 2, "1": 1, "2": 1, "3": 1}  # GPU 3 gave no sample: no advice either
    assert underuse_advice(samples, workers) == [
        "GPU 0 averaged 40% busy with 2 workers; try --per-gpu 4"
    ]
    assert underuse_advice(samples, {"0": 1}) == [
        "GPU 0 averaged 40% busy with 1 worker; try --per-gpu 2"
    ]
    assert underuse_advice(samples[:2], {"1": 1}) == []


def test_launch_samples_nvidia_smi_and_logs_its_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = tmp_path / "calls"
    smi = tmp_path / "bin" / "nvidia-smi"  # a stand-in that answers as a mostly idle GPU would
    smi.parent.mkdir()
    smi.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho '0, 22, 3000, 81559'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    slots = plan_slots(gpus="0", per_gpu=2, available=gpus("0"), memory=lambda gpu: None)
    watch = UsageWatch(sample_s=0.1, warmup_s=0.2, window_s=0.6)
    with caplog.at_level("INFO", logger="study.launch"):
        summary = launch(
            slots, lambda slot: python("import time; time.sleep(3)"), usage_watch=watch,
            out=io.StringIO(),
        )  # fmt: skip
    advice = "GPU 0 averaged 22% busy with 2 workers; try --per-gpu 4"
    assert summary.advice == (advice,)
    assert advice in caplog.messages
    queries = calls.read_text().splitlines()
    assert len(queries) >= 3
    assert queries[0] == (
        "--query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits"
    )


def test_no_advice_when_the_workers_end_before_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, 5, 3000, 81559'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    watch = UsageWatch(sample_s=0.1, warmup_s=0.0, window_s=30.0)
    summary = launch(
        [Slot(1, "0")], lambda slot: python("pass"), usage_watch=watch, out=io.StringIO()
    )
    assert summary.clean and summary.advice == ()


def test_a_dying_worker_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = f"""
        with open({str(runs)!r}, "a") as f:
            f.write("x")
        raise SystemExit(3)
    """
    summary = launch([Slot(1)], lambda slot: python(code), max_restarts=2, out=io.StringIO())
    assert runs.read_text() == "xxx"
    assert [(o.returncode, o.restarts) for o in summary.outcomes] == [(3, 2)]
    assert not summary.clean


def test_a_worker_that_recovers_after_a_restart_ends_clean(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    # The marker is made atomically: of two workers starting together, exactly one crashes.
    code = f"""
        import os
        try:
            os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            raise SystemExit(1)
    """
    summary = launch([Slot(1), Slot(2)], lambda slot: python(code), out=io.StringIO())
    assert summary.clean
    assert sorted(o.restarts for o in summary.outcomes) == [0, 1]


def test_a_worker_with_bad_input_is_not_restarted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = f"""
        open({str(runs)!r}, "a").write("x")
        raise SystemExit(2)
    """
    summary = launch([Slot(1)], lambda slot: python(code), max_restarts=3, out=io.StringIO())
    assert runs.read_text() == "x"
    assert summary.outcomes[0].returncode == 2


def test_a_worker_that_found_no_database_is_restarted_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "runs"
    code = f"""
        open({str(runs)!r}, "a").write("x")
        raise SystemExit({_exit.UNAVAILABLE})
    """
    with caplog.at_level(logging.WARNING):
        summary = launch([Slot(1)], lambda slot: python(code), max_restarts=1, out=io.StringIO())
    assert runs.read_text() == "xx"  # unlike bad input: the server may be back by now
    assert summary.outcomes[0].returncode == _exit.UNAVAILABLE
    assert "exit code 75: the study database did not answer" in caplog.text


def test_progress_failing_while_the_database_is_away_stops_no_worker(
    postgres_server: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(postgres_server.create_database())
    study = create_grid_study(storage, "lr", {"learning_rate": [0.1], "seed": [0]})
    done = tmp_path / "done"
    code = f"""
        import time
        time.sleep(2)
        open({str(done)!r}, "w").write("trained")
    """
    postgres_server.stop()
    try:
        summary = launch(
            [Slot(1)],
            lambda slot: python(code),
            out=io.StringIO(),
            on_tick=lambda: print(progress_line(study)),
            tick_s=0.3,
        )
    finally:
        postgres_server.start()
    assert summary.clean and done.read_text() == "trained"
    assert "progress unavailable (" in caplog.text and "the workers go on" in caplog.text
    assert progress_line(study) == "0/1 complete, 0 running, 1 waiting, 0 failed"


# A launcher in its own process, so that it owns its signal handlers as the CLI does.
LAUNCHER = """
import json, sys
from study.launch import Slot, launch
worker = sys.argv[1]
summary = launch([Slot(1), Slot(2)], lambda slot: [sys.executable, "-c", worker],
                 max_restarts=1, out=sys.stdout)
print("SUMMARY", json.dumps({"signal": summary.interrupted_by,
      "outcomes": [[o.returncode, o.restarts] for o in summary.outcomes]}), flush=True)
"""


def start_launcher(worker_code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, textwrap.dedent(worker_code)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def read_until(process: subprocess.Popen[str], predicate, lines: list[str]) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, f"launcher ended early: {lines}"
        lines.append(line.rstrip("\n"))
        if predicate(lines):
            return
    raise AssertionError(f"timed out: {lines}")


def summary_of(process: subprocess.Popen[str], lines: list[str]) -> dict:
    rest, _ = process.communicate(timeout=30)
    lines += rest.splitlines()
    return json.loads(next(line for line in lines if line.startswith("SUMMARY"))[8:])


def test_sigint_is_passed_on_as_sigterm_and_nobody_restarts() -> None:
    worker = """
        import os, signal, sys, time
        def stop(signum, frame):
            print("stopping on", signal.Signals(signum).name, flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", os.getpid(), flush=True)
        time.sleep(60)
    """
    launcher = start_launcher(worker)
    lines: list[str] = []
    read_until(launcher, lambda seen: sum("ready" in line for line in seen) == 2, lines)
    launcher.send_signal(signal.SIGINT)
    summary = summary_of(launcher, lines)
    assert launcher.returncode == 0
    assert summary == {"signal": signal.SIGINT, "outcomes": [[0, 0], [0, 0]]}
    assert "[w1 cpu] stopping on SIGTERM" in lines
    assert "[w2 cpu] stopping on SIGTERM" in lines


def test_a_second_signal_kills_workers_that_ignore_the_first() -> None:
    worker = """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring TERM", flush=True))
        print("ready", flush=True)
        while True:
            time.sleep(60)
    """
    launcher = start_launcher(worker)
    lines: list[str] = []
    read_until(launcher, lambda seen: sum("ready" in line for line in seen) == 2, lines)
    first = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    # The same stop again at once, as `scancel --full` delivers it (to the batch script, which
    # passes it on, and to the launcher): one stop, not a second signal.
    time.sleep(0.3)
    launcher.send_signal(signal.SIGTERM)
    read_until(launcher, lambda seen: sum("ignoring TERM" in line for line in seen) == 2, lines)
    time.sleep(max(0.0, first + 3.0 - time.monotonic()))  # well past the 2 s
    assert launcher.poll() is None  # still waiting for its workers
    launcher.send_signal(signal.SIGTERM)  # a real second signal, later
    summary = summary_of(launcher, lines)
    assert summary == {"signal": signal.SIGTERM, "outcomes": [[-9, 0], [-9, 0]]}
    assert sum("ignoring TERM" in line for line in lines) == 2


def test_a_worker_killed_from_outside_is_restarted(tmp_path: Path) -> None:
    first = tmp_path / "first"
    worker = f"""
        import os, time
        try:
            fd = os.open({str(first)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print("second life", flush=True)
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            print("ready", flush=True)
            time.sleep(60)
    """
    launcher = start_launcher(worker)
    lines: list[str] = []
    read_until(launcher, lambda seen: any("ready" in line for line in seen), lines)
    os.kill(int(first.read_text()), signal.SIGKILL)
    summary = summary_of(launcher, lines)
    assert summary["signal"] is None
    assert sorted(summary["outcomes"]) == [[0, 0], [0, 1]]
    assert sum("second life" in line for line in lines) == 2


def test_a_worker_ends_when_its_launcher_is_killed(tmp_path: Path) -> None:
    # The launcher stand-in starts one worker that follows it, then waits; SIGKILL on the
    # launcher must end the worker too (its trial would otherwise stay RUNNING).
    pid_file = tmp_path / "worker.pid"
    worker = (
        "import os, time; from study.launch import follow_launcher; follow_launcher(); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    launcher = (
        "import os, subprocess, sys, time; "
        f"env = dict(os.environ, {LAUNCHER_ENV}=str(os.getpid())); "
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], env=env, start_new_session=True); "
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.1)
    worker_pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker_pid}").exists() and "Z" not in _proc_state(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its launcher"
        time.sleep(0.1)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"

"""A study on a Slurm cluster: one job array whose tasks each run ``lrstudy launch``.

Slurm only hands out allocations; which cell a task trains is decided by the study in the
database, as for launchers on any machines. So a task that is preempted, requeued or cancelled
loses nothing: its workers put their running cells back in the queue (SIGTERM), and any task
(itself once requeued) trains them. The storage URL reaches the tasks through the environment
(``sbatch --export=ALL``), never through the script file or a command line.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer import InputError

# Seconds before the time limit at which Slurm sends SIGTERM: the workers' interrupted cells
# must be written back to the database (and a checkpoint finished) before SIGKILL.
DEFAULT_SIGNAL_S = 120
# Set in the launcher's environment only; the script's exit sweep finds leftovers by it.
TAG_ENV = "LRSTUDY_SLURM_TAG"
_SBATCH_TIMEOUT_S = 120
# Slurm's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+))?(?::(\d+))?|(\d+)(?::(\d+))?(?::(\d+))?)$")
_TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_NAME = re.compile(r"^[A-Za-z0-9_.,+:=@/-]+$")  # partition, account: no spaces or quotes
_JOB_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")
# Options the script itself must set for the study to work, given after -- they would win:
# what each one sets, and what to do instead.
_OWN_OPTIONS = {
    "--array": ("the task count", "pass --array N"),
    "--signal": ("the early SIGTERM that hands cells back", "pass --signal-seconds S"),
    "--time": ("the time limit checked against the signal", "pass --time"),
    "--gres": ("each task's GPUs", "pass --gpus-per-task G"),
    "--requeue": ("the requeue of a preempted task", "leave it out"),
    "--no-requeue": ("the requeue of a preempted task", "leave it out"),
    "--output": ("the task logs in the study's folder", "pass --artifacts DIR"),
    "--error": ("the task logs in the study's folder", "pass --artifacts DIR"),
    "--open-mode": ("the task logs in the study's folder", "pass --artifacts DIR"),
    "--nodes": ("one node per task", "leave it out"),
    "--ntasks": ("one launcher per task", "leave it out"),
}
# sbatch's short options, as their long names.
_SHORT = {
    "-a": "--array", "-A": "--account", "-C": "--constraint", "-e": "--error", "-G": "--gpus",
    "-J": "--job-name", "-n": "--ntasks", "-N": "--nodes", "-o": "--output", "-p": "--partition",
    "-q": "--qos", "-t": "--time",
}  # fmt: skip
# The input environment variables of sbatch whose names do not follow SBATCH_<OPTION>.
_ENVIRONMENT = {
    "--array": ("SBATCH_ARRAY_INX",),
    "--time": ("SBATCH_TIMELIMIT",),
    "--mem": ("SBATCH_MEM_PER_NODE",),
    "--requeue": ("SBATCH_REQUEUE", "SBATCH_NO_REQUEUE"),
    "--output": ("SBATCH_OUTPUT", "SBATCH_ERROR"),  # a separate error file would split the log
}


def default_command() -> tuple[str, ...]:
    """How tasks start lrstudy: this Python (a venv path the nodes share) with ``-m study``."""
    return (sys.executable, "-m", "study")


@dataclass(frozen=True)
class SlurmPlan:
    """What one ``lrstudy slurm`` submission asks of Slurm; checked when made.

    Args:
        study: The study name.
        array: Array tasks (``--array``), each one allocation running ``lrstudy launch``.
        log_dir: Absolute folder of the tasks' logs (``<id>_<task>.log``), on a file system the
            nodes share.
        gpus_per_task: GPUs per task (``--gres=gpu:G``); 0 runs one CPU worker per task.
        per_gpu: Workers sharing each GPU (``launch --per-gpu``).
        cpus_per_task: ``--cpus-per-task``; None leaves the partition's default.
        partition: ``--partition``; None: the cluster's default partition.
        time: ``--time`` in one of Slurm's formats; None: the partition's limit.
        account: ``--account``; None: the user's default.
        signal_s: Seconds before the end at which the script gets SIGTERM (``--signal``).
        job_name: ``--job-name``; "" makes ``lrstudy-<study>``.
        sbatch_args: More sbatch options (after ``--``), written as #SBATCH lines last.
        launch_args: More ``lrstudy launch`` options (``--data DIR``, ``--backend jax``, ...).
        command: The argv prefix that runs lrstudy on a node.
    """

    study: str
    array: int
    log_dir: str
    gpus_per_task: int = 0
    per_gpu: int = 1
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    signal_s: int = DEFAULT_SIGNAL_S
    job_name: str = ""
    sbatch_args: tuple[str, ...] = ()
    launch_args: tuple[str, ...] = ()
    command: tuple[str, ...] = field(default_factory=default_command)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def name(self) -> str:
        """The job name: ``job_name``, else ``lrstudy-<study>`` with unsafe characters as _."""
        return self.job_name or "lrstudy-" + _JOB_NAME_UNSAFE.sub("_", self.study)


def _integer(value: object, flag: str, minimum: int, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{flag} must be an integer >= {minimum}; got {value!r}. {example}")


def time_seconds(value: str) -> int:
    """Seconds of a ``--time`` value, in any of Slurm's formats (``_TIME_FORMATS``).

    Raises:
        InputError: another format, or minutes or seconds (after hours) of 60 or more, or hours
            (after days) of 24 or more.
    """
    match = _TIME.match(value.strip())
    days = hours = minutes = seconds = 0
    valid = match is not None
    if match is not None and match.group(1) is not None:  # D-HH[:MM[:SS]]
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups()[:4])
        valid = hours < 24 and minutes < 60 and seconds < 60
    elif match is not None:  # MM, MM:SS or HH:MM:SS
        given = [int(part) for part in match.groups()[4:] if part is not None]
        if len(given) == 3:
            hours, minutes, seconds = given
            valid = minutes < 60 and seconds < 60
        else:
            minutes, seconds = [*given, 0][:2]
            valid = seconds < 60
    if not valid:
        raise InputError(
            f"--time must be a Slurm time ({_TIME_FORMATS}); got {value!r}. Example: --time "
            "12:00:00 or --time 2-00:00:00."
        )
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _validate(plan: SlurmPlan) -> None:
    if not plan.study or "\n" in plan.study or "\r" in plan.study:
        raise InputError(f"--study must be a study name on one line; got {plan.study!r}.")
    _integer(plan.array, "--array", 1, "Example: --array 8 for 8 tasks.")
    _integer(plan.gpus_per_task, "--gpus-per-task", 0, "Use 0 for CPU tasks.")
    _integer(plan.per_gpu, "--per-gpu", 1, "Use --per-gpu 1.")
    if plan.per_gpu > 1 and plan.gpus_per_task == 0:
        raise InputError(
            f"--per-gpu {plan.per_gpu} needs GPUs; got --gpus-per-task 0. "
            "Add --gpus-per-task G, or drop --per-gpu for CPU tasks."
        )
    if plan.cpus_per_task is not None:
        _integer(plan.cpus_per_task, "--cpus-per-task", 1, "Example: --cpus-per-task 4.")
    _integer(plan.signal_s, "--signal-seconds", 1, f"Default: {DEFAULT_SIGNAL_S}.")
    if plan.signal_s > 65535:  # Slurm keeps it in 16 bits
        raise InputError(f"--signal-seconds must be at most 65535; got {plan.signal_s}.")
    limit = None if plan.time is None else time_seconds(plan.time)
    if limit == 0:
        raise InputError(
            f"--time {plan.time} means no time limit to Slurm; leave --time out (the "
            "partition's limit applies) or give a limit, e.g. --time 12:00:00."
        )
    if limit is not None and limit <= plan.signal_s:
        raise InputError(
            f"--time {plan.time} is not longer than --signal-seconds {plan.signal_s}, so tasks "
            "would be told to stop as they start; give more --time or fewer --signal-seconds."
        )
    for flag, value in (("--partition", plan.partition), ("--account", plan.account)):
        if value is not None and not _NAME.match(value):
            raise InputError(
                f"{flag} must be a Slurm name without spaces or quotes; got {value!r}."
            )
    if plan.job_name and not _NAME.match(plan.job_name):
        raise InputError(
            f"--job-name must be a name without spaces or quotes; got {plan.job_name!r}."
        )
    if not Path(plan.log_dir).is_absolute() or any(c in plan.log_dir for c in '"\n\r'):
        raise InputError(
            f"the log folder must be an absolute path without quotes; got {plan.log_dir!r}."
        )
    if not plan.command:
        raise InputError("the lrstudy command of the tasks is empty; use default_command().")
    _sbatch_lines(plan.sbatch_args)  # raises on options it cannot write
    if plan.gpus_per_task and any(_long_name(arg) == "--gres" for arg in plan.sbatch_args):
        raise InputError(
            f"--gres (after --) would replace the script's --gres=gpu:{plan.gpus_per_task}; "
            "ask for other generic resources in your own sbatch script, or pass "
            "--gpus-per-task 0."
        )


def _sbatch_lines(args: Sequence[str]) -> list[str]:
    """``#SBATCH`` lines for the options given after ``--``: an option and its values a line."""
    groups: list[list[str]] = []
    for arg in args:
        if any(c in arg for c in '"\n\r'):
            raise InputError(
                f"sbatch option {arg!r} (after --) holds a quote or a line break, which an "
                "#SBATCH line cannot carry; put it in your own sbatch script instead."
            )
        if arg.startswith("-"):
            groups.append([arg])
        elif groups:
            groups[-1].append(arg)
        else:
            raise InputError(
                f"sbatch options after -- must start with an option like --qos; got {arg!r}."
            )
    for group in groups:
        option = _long_name(group[0])
        value = group[0].partition("=")[2] or (group[1] if len(group) > 1 else "")
        if option in _OWN_OPTIONS and not (option == "--gres" and "gpu" not in value):
            what, instead = _OWN_OPTIONS[option]
            raise InputError(
                f"{group[0]} (after --) is one of the script's own options ({what}); {instead}."
            )
        if option == "--export" and not value.startswith("ALL"):
            raise InputError(
                f"--export={value} (after --) would keep $LRSTUDY_STORAGE from the tasks; "
                "leave --export out (the script asks for ALL) or use --export=ALL,..."
            )
    return ["#SBATCH " + " ".join(_quoted(arg) for arg in group) for group in groups]


def _long_name(arg: str) -> str:
    """The long name of the sbatch option ``arg`` starts with, as sbatch's getopt reads it:
    ``-t12:00`` and ``-t`` are ``--time``, and ``--arr=0-9``, a prefix of one option only,
    is ``--array``."""
    if not arg.startswith("--"):
        return _SHORT.get(arg[:2], arg[:2])
    name = arg.partition("=")[0]
    known = [option for option in (*_OWN_OPTIONS, "--export") if option.startswith(name)]
    return known[0] if len(known) == 1 else name


def _quoted(arg: str) -> str:
    """sbatch reads #SBATCH lines split at blanks, with "..." keeping blanks together."""
    if not any(c.isspace() for c in arg):
        return arg
    option, equals, value = arg.partition("=")
    if equals and not any(c.isspace() for c in option):
        return f'{option}="{value}"'
    return f'"{arg}"'


def _options(plan: SlurmPlan) -> list[str]:
    """The script's own #SBATCH options (those after -- follow them)."""
    options = [
        f"--job-name={plan.name}",
        f"--array=0-{plan.array - 1}",
        "--nodes=1",
        "--ntasks=1",
    ]
    if plan.cpus_per_task is not None:
        options.append(f"--cpus-per-task={plan.cpus_per_task}")
    if plan.gpus_per_task:
        options.append(f"--gres=gpu:{plan.gpus_per_task}")
    for flag, value in (
        ("partition", plan.partition),
        ("account", plan.account),
        ("time", plan.time),
    ):
        if value is not None:
            options.append(f"--{flag}={value}")
    log = plan.log_dir.replace("%", "%%").rstrip("/") + "/%A_%a.log"  # %% is a plain %
    options += [
        "--requeue",
        f"--signal=B:TERM@{plan.signal_s}",
        "--export=ALL",
        "--open-mode=append",
        f'--output="{log}"',
    ]
    return options


def sbatch_environment(
    plan: SlurmPlan, env: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """sbatch's environment without the ``SBATCH_*`` variables of options the script sets, and
    the names left out.

    sbatch lets such a variable override an #SBATCH line (sbatch(1), "Environment variables
    will override any options set in a batch script"): a site's ``SBATCH_EXPORT=NONE`` would
    keep $LRSTUDY_STORAGE from the tasks, an ``SBATCH_SIGNAL`` the early SIGTERM. Variables of
    options the script leaves out (``SBATCH_QOS``, say) still apply.
    """
    names = {option.partition("=")[0] for option in _options(plan)}
    names |= {_long_name(arg) for arg in plan.sbatch_args if arg.startswith("-")}
    drop = {
        variable
        for name in names
        for variable in _ENVIRONMENT.get(name, ("SBATCH_" + name[2:].upper().replace("-", "_"),))
    }
    return {k: v for k, v in env.items() if k not in drop}, sorted(drop & set(env))


def render_script(plan: SlurmPlan, *, written: str = "") -> str:
    """The sbatch script of ``plan``: the job array's options, then one launcher per task.

    The launcher runs in the background so that the script can pass on the SIGTERM that Slurm
    sends it alone (``--signal=B:TERM@S``, ``scancel --batch``): bash runs a trap only between
    commands, never while a foreground child runs. When the task ends, anything the launcher
    left running is stopped: with ``proctrack/linuxproc`` an orphaned worker is no longer part
    of the job, and would keep training after the job ended.

    Args:
        plan: The submission.
        written: When and by whom, for the header comment. Defaults to nothing.
    """
    header = "\n".join(f"#SBATCH {option}" for option in _options(plan))
    extra = "\n".join(_sbatch_lines(plan.sbatch_args))
    if plan.gpus_per_task:
        slots = _GPU_SLOTS.format(per_gpu=plan.per_gpu)
    else:
        slots = "slots=(--workers 1)\n"
    launch = " ".join(
        [
            shlex.join([*plan.command, "launch"]),
            '"${slots[@]}"',
            shlex.join(["--study", plan.study, *plan.launch_args]),
        ]
    )
    return _SCRIPT.format(
        header=header + ("\n" + extra if extra else ""),
        written=f" {written}" if written else "",
        study=repr(plan.study),
        study_echo=shlex.quote(plan.study),
        tasks=plan.array,
        signal_s=plan.signal_s,
        slots=slots,
        launch=launch,
        tag_env=TAG_ENV,
    )


_GPU_SLOTS = """\
if [ -z "${{CUDA_VISIBLE_DEVICES:-}}" ]; then
    echo "lrstudy: Slurm gave this task no GPU (CUDA_VISIBLE_DEVICES is empty); use a" \\
        "partition with gres/gpu, or submit with --gpus-per-task 0" >&2
    exit 2
fi
# The GPUs of this allocation only (without device cgroups every GPU of the node is
# visible): Slurm's CUDA_VISIBLE_DEVICES is the launcher's pool, and --gpus all takes it whole.
slots=(--gpus all --per-gpu {per_gpu})
"""

_SCRIPT = """\
#!/bin/bash
{header}
#
# Written by `lrstudy slurm`{written} for study {study}: each of the {tasks} array tasks
# runs `lrstudy launch` in its allocation until no cell of the study is left.
# The storage URL is not in this file: the tasks read $LRSTUDY_STORAGE, which sbatch
# (--export=ALL) copies from the environment it was submitted from.
# Time limit and `scancel --batch --signal=TERM`: this script gets SIGTERM {signal_s} s early
# and passes it on to the launcher, whose workers put their running cells back in the queue.
# A requeued task (preemption, `scontrol requeue`) starts again and pulls cells as any other.

set -u

if [ -z "${{LRSTUDY_STORAGE:-}}" ]; then
    echo "lrstudy: \\$LRSTUDY_STORAGE is not set in this job; submit it with" \\
        "\\`lrstudy slurm\\`, which sets it for sbatch (--export=ALL)" >&2
    exit 2
fi
export CUDA_DEVICE_ORDER=PCI_BUS_ID  # number GPUs as nvidia-smi and Slurm do
echo "lrstudy: study "{study_echo}", task ${{SLURM_ARRAY_TASK_ID:-0}} of job" \\
    "${{SLURM_ARRAY_JOB_ID:-${{SLURM_JOB_ID:-?}}}} on ${{SLURMD_NODENAME:-$HOSTNAME}}," \\
    "restart ${{SLURM_RESTART_COUNT:-0}}, GPUs ${{CUDA_VISIBLE_DEVICES:-none}}"
{slots}
# Marks the launcher and its workers (only they have it) for the sweep at the end.
tag="lrstudy-${{SLURM_JOB_ID:-0}}-$$-${{SLURM_RESTART_COUNT:-0}}"
{tag_env}="$tag" {launch} &
launcher=$!

# Slurm ends a whole job (scancel, requeue, preemption, the time limit) with SIGCONT and then
# SIGTERM to every process, the launcher included; a second SIGTERM would make the launcher
# kill its workers before they re-queue their cells. So only a SIGTERM sent to this script
# alone (--signal=B:TERM, scancel --batch) is passed on. The traps only note the time: bash
# runs pending traps in signal-number order (TERM before CONT), so the choice is made after
# both have run, between waits.
term_at=-1
cont_at=-1
passed=0
forwarded=0
trap 'cont_at=$SECONDS' CONT
trap 'term_at=$SECONDS' TERM INT
pass_on() {{
    (( term_at < 0 || passed )) && return 0
    passed=1
    if (( cont_at >= 0 && term_at - cont_at <= 2 )); then
        echo "lrstudy: SIGTERM went to the whole job; the launcher has it too" >&2
    else
        echo "lrstudy: SIGTERM; passing it on to the launcher, whose workers re-queue" \\
            "their cells" >&2
        kill -TERM "$launcher" 2>/dev/null
        forwarded=1
    fi
    return 0
}}

leftovers() {{
    local file pids=()
    for file in $(grep -lsxzF "{tag_env}=$tag" /proc/[0-9]*/environ 2>/dev/null); do
        file=${{file#/proc/}}
        pids+=("${{file%/environ}}")
    done
    echo "${{pids[*]}}"
}}
# Nothing may outlive the task: under proctrack/linuxproc a process whose parent died is no
# longer part of the job, and a worker would keep training outside any allocation.
sweep() {{
    local pids waited=0
    pids=$(leftovers)
    [ -z "$pids" ] && return 0
    echo "lrstudy: stopping what the launcher left running: pids $pids" >&2
    kill -TERM $pids 2>/dev/null
    while [ -n "$(leftovers)" ] && (( waited < 30 )); do
        sleep 1
        waited=$((waited + 1))
    done
    pids=$(leftovers)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    return 0
}}
trap sweep EXIT

# A trapped signal ends bash's wait early, so wait in short rounds (each one a chance to pass
# a signal on), then once more for the launcher's exit code.
while kill -0 "$launcher" 2>/dev/null; do
    pass_on
    sleep 1 &
    wait $!
done
wait "$launcher"
code=$?
sweep
if (( forwarded && code != 0 )); then
    echo "lrstudy: this task stopped early (its time limit, or scancel --batch); its cells" \\
        "are back in the queue for the other tasks; if none is left, submit again or run" \\
        "scontrol requeue ${{SLURM_JOB_ID:-JOBID}}" >&2
fi
echo "lrstudy: launcher ended with exit code $code"
exit "$code"
"""


def submit(script_path: str | Path, env: Mapping[str, str], *, sbatch: str = "sbatch") -> str:
    """Submit ``script_path`` with ``sbatch --parsable``; the job id.

    Args:
        script_path: The script of ``render_script``.
        env: sbatch's environment, which the tasks receive (``--export=ALL``): it carries
            ``$LRSTUDY_STORAGE``.
        sbatch: The sbatch program. Defaults to `"sbatch"` (found on PATH).

    Raises:
        InputError: sbatch is missing, does not answer, or refuses the job (its reason in one
            line).
    """
    try:
        done = subprocess.run(
            [sbatch, "--parsable", str(script_path)],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_SBATCH_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as error:
        raise InputError(
            f"{sbatch} is not on PATH; run `lrstudy slurm` on a login node of the cluster, or "
            "add --dry-run to only print the script."
        ) from error
    except subprocess.TimeoutExpired as error:
        raise InputError(
            f"sbatch did not answer within {_SBATCH_TIMEOUT_S} s; check that Slurm is up "
            "(`sinfo`) and submit again."
        ) from error
    if done.returncode != 0:
        reason = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        raise InputError(
            f"sbatch refused the job: {reason[:400]}; fix the options and submit again "
            f"(script: {script_path})."
        )
    job = done.stdout.strip().split(";", 1)[0]
    if not job.isdigit():
        raise InputError(
            f"sbatch printed no job id but {done.stdout.strip()[:200]!r}; check `squeue --me`."
        )
    return job

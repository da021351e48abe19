"""The JAX determinism probe: a child process answers, and the worker decides on its answer."""

from __future__ import annotations

import logging

import pytest

from trainer._determinism import IF_AVAILABLE, Probe, decide, probe
from trainer._errors import InputError

MISSING = Probe("gpu", "XlaRuntimeError: select-and-scatter has no deterministic implementation")


def test_the_probe_compiles_the_max_pool_gradient_under_the_flag() -> None:
    found = probe()
    assert found.platform == "cpu" and found.compiles, found  # CPU XLA is deterministic
    assert found.repeatable and found.compile_s is not None and found.compile_s > 0
    assert "--xla_gpu_deterministic_ops=true" in found.xla_flags.split()
    without = probe(deterministic=False)
    assert without.compiles and "deterministic_ops" not in without.xla_flags


def test_a_jaxlib_that_refuses_the_flags_is_reported_not_raised() -> None:
    # Stands for an XLA without the kernel: it aborts on start, as on an unknown flag.
    found = probe(extra_flags="--xla_lrstudy_no_such_flag=true")
    assert not found.compiles and "exit code" in (found.error or "")


def test_true_stops_the_worker_in_one_line_naming_the_ways_out() -> None:
    with pytest.raises(InputError) as error:
        decide(True, MISSING)
    message = str(error.value)
    assert "\n" not in message and "train.deterministic = false" in message
    assert '"if-available"' in message and "select-and-scatter" in message


def test_if_available_logs_and_trains_without_the_flag(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trainer._determinism"):
        assert decide(IF_AVAILABLE, MISSING) is False
    assert "not reproducible to the last digit" in caplog.text
    assert decide(IF_AVAILABLE, Probe("gpu", None)) is True
    assert decide(True, Probe("gpu", None)) is True
    assert decide(False, MISSING) is False

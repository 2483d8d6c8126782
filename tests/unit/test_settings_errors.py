"""A bad setting ends a service with one line naming the variable, not a pydantic traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.catalog.settings import CatalogSettings
from services.common.main import read_settings
from services.runner.settings import RunnerSettings


def test_each_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_RUNNER_THREADS", "")  # an empty line in a compose .env file
    monkeypatch.setenv("JAN_RUNNER_PORT", "abc")
    with pytest.raises(SystemExit) as exc:
        read_settings(RunnerSettings)
    message = str(exc.value.code)
    assert message.startswith("invalid settings:")
    assert "JAN_RUNNER_THREADS='': Input should be a valid integer" in message
    assert "JAN_RUNNER_PORT='abc'" in message


def test_a_shared_name_is_named_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_ALLOW_PRIVATE_NETWORKS", "maybe")
    with pytest.raises(SystemExit) as exc:
        read_settings(CatalogSettings)
    assert "ALLOW_PRIVATE_NETWORKS='maybe': Input should be a valid boolean" in str(exc.value.code)


def test_the_process_exits_with_the_message_and_no_traceback() -> None:
    env = {"JAN_GATEWAY_PORT": "x", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "JAN_GATEWAY_PORT='x'" in done.stderr and "Traceback" not in done.stderr

"""Where a runner says it can be reached (the address the catalog hands to the gateway)."""

from __future__ import annotations

from pathlib import Path

from services.runner.settings import RunnerSettings


def _settings(tmp_path: Path, **kw: object) -> RunnerSettings:
    return RunnerSettings(root=tmp_path, memory_budget_bytes=1024**3, **kw)  # type: ignore[arg-type]


def test_an_explicit_advertise_address_wins(tmp_path: Path) -> None:
    s = _settings(tmp_path, host="0.0.0.0", advertise_address="runner-0.runners:13372")
    assert s.derive_advertise_address(13372, lambda: "10.9.8.7") == "runner-0.runners:13372"


def test_a_concrete_bind_address_is_advertised_as_it_is(tmp_path: Path) -> None:
    assert _settings(tmp_path, host="127.0.0.1").derive_advertise_address(4242) == "127.0.0.1:4242"


def test_a_wildcard_bind_advertises_the_machines_own_address(tmp_path: Path) -> None:
    # A container bound to 0.0.0.0: its hostname resolves to its own IP (a stub here, nothing resolved).
    s = _settings(tmp_path, host="0.0.0.0")
    assert s.derive_advertise_address(13372, lambda: "172.18.0.5") == "172.18.0.5:13372"
    v6 = _settings(tmp_path, host="::")
    assert v6.derive_advertise_address(13372, lambda: "fd00::5") == "[fd00::5]:13372"


def test_the_machines_own_address_is_found_without_a_stub(tmp_path: Path) -> None:
    address = _settings(tmp_path, host="0.0.0.0").derive_advertise_address(13372)
    host, port = address.rsplit(":", 1)
    assert port == "13372" and host not in ("0.0.0.0", "")

"""services/common/service_settings.py: the conventions and fields every service's settings share."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from services.catalog.settings import CatalogSettings
from services.common.envsettings import SettingsError, split_list
from services.common.service_settings import (
    GrpcPort,
    HfEndpoint,
    LogLevel,
    ServiceSettings,
    hf_endpoint_field,
    root_field,
    shared_alias,
)
from services.downloader.settings import DownloaderSettings
from services.runner.settings import RunnerSettings


class ExampleSettings(ServiceSettings):
    env_prefix = "JAN_EXAMPLE_"

    root: Path = root_field("JAN_EXAMPLE_", "Jan's root folder.")
    port: GrpcPort = 1
    log_level: LogLevel = "INFO"
    catalog_address: str = "x"
    hf_endpoint: HfEndpoint = hf_endpoint_field("JAN_EXAMPLE_", "The Hub.")


def test_the_service_variable_wins_over_the_shared_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_ROOT", "/shared")
    assert ExampleSettings().root == Path("/shared")
    monkeypatch.setenv("JAN_EXAMPLE_ROOT", "/own")
    assert ExampleSettings().root == Path("/own")


def test_the_hub_is_the_services_variable_else_huggingface_hubs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert ExampleSettings().hf_endpoint == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/hf/")
    assert ExampleSettings().hf_endpoint == "https://mirror.example/hf"  # URLs are built as endpoint + "/..."
    monkeypatch.setenv("JAN_EXAMPLE_HF_ENDPOINT", "https://own.example")
    assert ExampleSettings().hf_endpoint == "https://own.example"


def test_root_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("JAN_ROOT", raising=False)  # `make` exports one
    assert ExampleSettings().root == tmp_path.resolve() / "jan"
    assert ExampleSettings(root=Path("rel")).root == Path.cwd() / "rel"


def test_the_shared_bounds_hold_and_unknown_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAN_EXAMPLE_SOMETHING_ELSE", "1")
    assert ExampleSettings(port=0, log_level="DEBUG").port == 0
    with pytest.raises(SettingsError):
        ExampleSettings(port=65536)
    with pytest.raises(SettingsError):
        ExampleSettings(log_level="LOUD")


def test_shared_alias_names_both_variables() -> None:
    assert shared_alias("JAN_RUNNER_", "catalog_address") == (
        "JAN_RUNNER_CATALOG_ADDRESS",
        "JAN_CATALOG_ADDRESS",
    )


def test_split_list_takes_commas_and_path_separators() -> None:
    assert split_list(" a, b:c ,, ") == ["a", "b", "c"]
    assert split_list(["x"]) == ["x"]


@pytest.mark.parametrize(
    ("cls", "first", "last"),
    [
        (CatalogSettings, ["root", "host", "port"], ["log_level", "metrics_port"]),
        (DownloaderSettings, ["root", "host", "port"], ["log_level", "metrics_port"]),
        (RunnerSettings, ["root", "name", "host", "port"], ["secret_env_names", "secret_dirs"]),
        (GatewaySettings, ["host", "port"], ["api_keys_file", "metrics_public"]),
    ],
)
def test_each_service_keeps_its_order(cls: type[ServiceSettings], first: list[str], last: list[str]) -> None:
    # --print-settings lists the fields in this order: the shared ones must not all move to the top.
    fields = list(cls.settings_fields())
    assert fields[: len(first)] == first and fields[-len(last) :] == last

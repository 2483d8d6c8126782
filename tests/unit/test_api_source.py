"""services/common/api_source.py: the source URLs an `api` model may have, one rule for the catalog's
naming of a new object and the runner's loading of it."""

from __future__ import annotations

import pytest

from services.catalog.importers import remote_model_name
from services.common.api_source import AZURE_DEFAULT_API_VERSION, ApiSource, parse_api_source
from services.common.errors import InvalidArgument
from services.runner.engines.api import parse_target


@pytest.mark.parametrize(
    ("url", "parameters", "expected"),
    [
        (
            "https://api.openai.com/v1/models/gpt-4o-mini",
            {},
            ApiSource("openai", "https://api.openai.com/v1", "gpt-4o-mini"),
        ),
        ("https://x.ai/v1", {"model": "grok"}, ApiSource("openai", "https://x.ai/v1", "grok")),
        (
            "https://r.openai.azure.com",
            {"DEPLOYMENT-NAME": "gpt4"},
            ApiSource("azure", "https://r.openai.azure.com", "gpt4", AZURE_DEFAULT_API_VERSION),
        ),
        (
            "https://proxy.example/openai/deployments/d1/chat?api-version=2024-06-01",
            {},
            ApiSource("azure", "https://proxy.example", "d1", "2024-06-01"),
        ),
    ],
)
def test_the_remote_a_source_url_names(url: str, parameters: dict[str, str], expected: ApiSource) -> None:
    assert parse_api_source(url, parameters) == expected


@pytest.mark.parametrize(
    ("url", "parameters"),
    [
        ("/tmp/x.gguf", {}),
        ("triton://t:8001/m", {}),
        ("https://api.openai.com/v1", {}),
        ("https://r.openai.azure.com", {}),
        # A catalog with a rule of its own once named such an object, which no runner could load.
        ("https://proxy.example/deployments/d1", {}),
    ],
)
def test_the_catalog_and_the_runner_refuse_the_same_urls(url: str, parameters: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        parse_target(url, parameters)
    with pytest.raises(InvalidArgument):
        remote_model_name(url, "api", parameters)


@pytest.mark.parametrize(
    ("url", "parameters"),
    [
        ("https://api.together.xyz/v1/models/meta-llama/Llama-3-8b", {}),
        (
            "https://r.openai.azure.com/openai/deployments/gpt4/chat/completions",
            {"api-version": "2024-06-01"},
        ),
        ("https://x.ai/v1/models/grok-1", {"model": "grok-2"}),
    ],
)
def test_a_new_object_is_named_after_the_model_the_runner_calls(url: str, parameters: dict[str, str]) -> None:
    target = parse_target(url, parameters)
    assert remote_model_name(url, "api", parameters) == target.model.replace("/", "_")

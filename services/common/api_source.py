"""Which source URLs a model of the `api` engine may have and which remote model they name: the one rule
the catalog applies when it names a new object and the runner when it loads one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from services.common.errors import InvalidArgument

AZURE_DEFAULT_API_VERSION = "2024-10-21"


@dataclass(frozen=True)
class ApiSource:
    """The remote an `api` model object names."""

    kind: str  # "openai" | "azure"
    base: str  # OpenAI: ".../v1"; Azure: "https://<resource>.openai.azure.com"
    model: str  # the remote model id, or the Azure deployment name
    api_version: str = ""


def parse_api_source(source_url: str, parameters: dict[str, Any]) -> ApiSource:
    """The remote of an `api` model object: an OpenAI-compatible `<base>/models/<model-id>` or an Azure
    OpenAI resource; InvalidArgument when the object does not say enough."""
    parts = urlsplit(source_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            "an api model's source_url must be the remote's http(s) URL "
            "(<base>/models/<model-id>, or an Azure OpenAI resource)",
            code="invalid_source_url",
            param="source_url",
        )
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    deployment = str(parameters.get("DEPLOYMENT-NAME") or parameters.get("deployment_name") or "")
    azure = (
        bool(deployment)
        or parts.hostname.endswith(".openai.azure.com")
        or "/openai/deployments/" in path
        or "api-version" in parameters
    )
    if azure:
        return _azure(origin, path, parts.query, deployment, parameters)
    return _openai(origin, path, parameters)


def _azure(origin: str, path: str, query: str, deployment: str, parameters: dict[str, Any]) -> ApiSource:
    if not deployment and "/openai/deployments/" in path:
        deployment = path.split("/openai/deployments/", 1)[1].split("/", 1)[0]
    if not deployment:
        deployment = path.rsplit("/", 1)[-1]
    if not deployment:
        raise InvalidArgument(
            "an Azure OpenAI model needs parameters.DEPLOYMENT-NAME", param="DEPLOYMENT-NAME"
        )
    version = str(
        parameters.get("api-version")
        or parameters.get("api_version")
        or (parse_qs(query).get("api-version") or [AZURE_DEFAULT_API_VERSION])[0]
    )
    return ApiSource("azure", origin, deployment, version)


def _openai(origin: str, path: str, parameters: dict[str, Any]) -> ApiSource:
    if "/models/" not in path + "/":
        model = str(parameters.get("model") or "")
        if not model:
            raise InvalidArgument(
                "an api model's source_url must name the remote model: <base>/models/<model-id>",
                code="invalid_source_url",
                param="source_url",
            )
        return ApiSource("openai", origin + path, model)
    at = path.find("/models/")
    base, model = path[:at], path[at + len("/models/") :]
    if not model:
        raise InvalidArgument(
            "the source_url names no remote model after /models/",
            code="invalid_source_url",
            param="source_url",
        )
    return ApiSource("openai", origin + base, str(parameters.get("model") or model))

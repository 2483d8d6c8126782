"""Importers of remote models: model objects of the `api` engine for an OpenAI-compatible API (`openai`) or
an Azure OpenAI resource (`azure_openai`), made from a base URL and a key, and the names of objects of
the engines whose models run elsewhere (`api`, `tensorrt`).

`openai` lists the remote's models (`GET <base>/models`) unless the caller names them; Azure's data plane
cannot list a resource's deployments, so `azure_openai` needs their names. Listing connects only to
addresses the URL rules allow (checked at connect time). The key is written into each object as given:
plain text, or better a reference the runner resolves (`env:NAME`, `file:/path`) — a reference cannot be
used here for listing, so with one the models must be named.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from services.common import netsafety
from services.common.api_source import AZURE_DEFAULT_API_VERSION, parse_api_source
from services.common.errors import FailedPrecondition, Unavailable
from services.common.filesafety import sanitize_name
from services.common.triton_source import parse_triton_source

IMPORTERS = ("openai", "azure_openai")


@dataclass(frozen=True)
class RemoteObject:
    """One model object to create: its file stem and its json properties."""

    stem: str
    source_url: str
    name: str
    parameters: dict[str, Any]
    metadata: dict[str, Any]


def safe_name(text: str) -> str:
    """A remote model id as a file or folder name ("meta-llama/Llama-3" -> "meta-llama_Llama-3")."""
    return sanitize_name(text, tidy=True) or "model"


def remote_model_name(source_url: str, engine: str, parameters: dict[str, Any]) -> str:
    """The name a new object of a remote engine takes when the caller gives no id; InvalidArgument when
    its source_url cannot be one of that engine's."""
    if engine == "tensorrt":
        return safe_name(parse_triton_source(source_url).model)
    return safe_name(parse_api_source(source_url, parameters).model)


def openai_objects(base_url: str, api_key: str, model_ids: list[str]) -> list[RemoteObject]:
    base = base_url.rstrip("/")
    return [
        RemoteObject(
            stem=safe_name(model_id),
            source_url=f"{base}/models/{model_id}",
            name=model_id,
            parameters={"API-KEY": api_key} if api_key else {},
            metadata={"engine": "api", "importer": "openai"},
        )
        for model_id in model_ids
    ]


def azure_objects(
    base_url: str, api_key: str, deployments: list[str], api_version: str
) -> list[RemoteObject]:
    parts = urlsplit(base_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    version = api_version or AZURE_DEFAULT_API_VERSION
    return [
        RemoteObject(
            stem=safe_name(name),
            source_url=f"{origin}/openai/deployments/{name}",
            name=name,
            parameters={"API-KEY": api_key, "DEPLOYMENT-NAME": name, "api-version": version},
            metadata={"engine": "api", "importer": "azure_openai"},
        )
        for name in deployments
    ]


async def list_openai_models(
    base_url: str, api_key: str, *, allow_private: bool, timeout_s: float = 15
) -> list[str]:
    """The ids a remote lists at `GET <base>/models` (OpenAI's `{"data": [{"id"}]}`), sorted."""
    # Imported here: the HTTP client costs the catalog ~10 MB resident, and listing a remote is rare.
    import aiohttp

    from services.common.safehttp import safe_session  # DNS-pinning, address rules at connect time

    url = base_url.rstrip("/") + "/models"
    await asyncio.to_thread(netsafety.require_safe_url, url, allow_private=allow_private, param="base_url")
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        async with (
            safe_session(allow_private, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url, headers=headers, allow_redirects=False) as resp,
        ):
            body = await resp.read()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise Unavailable(
            f"cannot list the models of {base_url}: {type(exc).__name__} {exc}", code="remote_unreachable"
        ) from None
    if status in (401, 403):
        raise FailedPrecondition(
            f"{base_url} rejected the key (HTTP {status}) when listing its models", code="remote_auth_failed"
        )
    if status != 200:
        raise FailedPrecondition(
            f"{base_url} cannot list its models (HTTP {status}): name them in `models`", code="remote_error"
        )
    try:
        data = orjson.loads(body)["data"]
        return sorted({str(m["id"]) for m in data})
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise FailedPrecondition(
            f"{base_url}/models did not answer an OpenAI model list: name the models in `models`",
            code="remote_error",
        ) from None

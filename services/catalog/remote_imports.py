"""A remote API's models as objects of the `api` engine, in one folder (ImportRemoteModels): the objects
come from services/catalog/importers.py and are written through authoring."""

from __future__ import annotations

from urllib.parse import urlsplit

from jan.model.v1 import model_pb2
from services.catalog import importers
from services.catalog.authoring import Authoring
from services.catalog.index import Index
from services.catalog.settings import CatalogSettings
from services.common.errors import AlreadyExists, InvalidArgument
from services.common.filesafety import check_name


class RemoteImports:
    def __init__(self, settings: CatalogSettings, index: Index, authoring: Authoring) -> None:
        self.settings = settings
        self.index = index
        self.authoring = authoring

    async def import_remote(
        self,
        importer: str,
        base_url: str,
        api_key: str = "",
        *,
        folder: str = "",
        models: list[str] | None = None,
        api_version: str = "",
    ) -> tuple[str, list[model_pb2.Model]]:
        """Objects for a remote's models, in one folder; models that exist already are left as they are
        and returned too."""
        host = _checked_remote(importer, base_url)
        objects = await self._objects(importer, base_url, api_key, list(models or []), api_version)
        folder = folder or importers.safe_name(host.split(".")[0] if importer == "azure_openai" else host)
        try:
            check_name(folder, "folder")
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="invalid_model_id", param="folder") from None
        return folder, [await self._create(folder, obj) for obj in objects]

    async def _objects(
        self, importer: str, base_url: str, api_key: str, names: list[str], api_version: str
    ) -> list[importers.RemoteObject]:
        if importer == "azure_openai":
            if not names:
                raise InvalidArgument(
                    "Azure OpenAI cannot list a resource's deployments with its key: name them in models",
                    param="models",
                )
            return importers.azure_objects(base_url, api_key, names, api_version)
        if not names:
            if api_key.startswith(("env:", "file:")):
                raise InvalidArgument(
                    "with a key reference the remote cannot be listed here: name the models", param="models"
                )
            names = await importers.list_openai_models(
                base_url, api_key, allow_private=self.settings.allow_private_networks
            )
        return importers.openai_objects(base_url, api_key, names)

    async def _create(self, folder: str, obj: importers.RemoteObject) -> model_pb2.Model:
        model_id = f"{folder}/{obj.stem}"
        try:
            return await self.authoring.create(
                source_url=obj.source_url,
                model_id=model_id,
                name=obj.name,
                parameters=obj.parameters,
                metadata=obj.metadata,
            )
        except AlreadyExists:
            return await self.index.get(model_id)


def _checked_remote(importer: str, base_url: str) -> str:
    """The host of `base_url`, when the importer is known and the URL is http(s)."""
    if importer not in importers.IMPORTERS:
        raise InvalidArgument(f"importer must be one of {', '.join(importers.IMPORTERS)}", param="importer")
    host = urlsplit(base_url).hostname
    if urlsplit(base_url).scheme not in ("http", "https") or not host:
        raise InvalidArgument("base_url must be an http(s) URL", param="base_url")
    return host

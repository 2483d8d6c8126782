"""A fake of the catalog as a runner sees it (the part of services/common/catalog_client.py a Runner
calls): the models it is asked about, and every heartbeat the runner sent, for unit tests of the runner's
core without a catalog server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from services.common.errors import NotFound


class FakeCatalogClient:
    def __init__(self, heartbeat_interval_s: float = 60.0) -> None:
        self.models: dict[str, model_pb2.Model] = {}
        self.heartbeats: list[catalog_pb.Runner] = []
        self.heartbeat_interval_s = heartbeat_interval_s

    def add_model(self, model_id: str, binary: Path, engine: str, parameters: dict[str, Any]) -> None:
        """A downloaded model whose one binary is the local file `binary`, used in place."""
        self.models[model_id] = model_pb2.Model(
            id=model_id,
            engine=engine,
            parameters_json=orjson.dumps(parameters).decode(),
            binaries=[model_pb2.Binary(name=binary.name, present=True, external_path=str(binary))],
        )

    async def get_model(self, model_id: str) -> model_pb2.Model:
        if model_id not in self.models:
            raise NotFound(f"model {model_id} not found", code="model_not_found")
        return self.models[model_id]

    async def list_models(self) -> list[model_pb2.Model]:
        return list(self.models.values())

    async def register_runner(self, runner: catalog_pb.Runner) -> catalog_pb.RegisterRunnerResponse:
        self.heartbeats.append(runner)
        return catalog_pb.RegisterRunnerResponse(heartbeat_interval_s=self.heartbeat_interval_s)

    @property
    def told(self) -> catalog_pb.Runner:
        """The runner's last heartbeat."""
        return self.heartbeats[-1]

    async def close(self) -> None:
        return None

"""The model-management shapes as pure functions (gateway/protocol/models.py): bodies to the catalog's
requests, model objects to JSON with credentials masked, Hugging Face repository URLs, memory fits."""

from __future__ import annotations

import orjson
import pytest

from gateway.protocol import models as protocol
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb


def test_a_create_body_maps_onto_the_catalogs_request() -> None:
    body = protocol.CreateModelIn(
        source_url="https://example.invalid/m.gguf",
        id="f/m",
        name="M",
        parameters={"ctx_len": 512},
        import_mode="copy",
    )
    req = protocol.create_request(body)
    assert (req.id, req.source_url, req.name, req.import_mode) == (
        "f/m",
        body.source_url,
        "M",
        catalog_pb.IMPORT_MODE_COPY,
    )
    assert orjson.loads(req.parameters_json) == {"ctx_len": 512} and req.metadata_json == ""
    assert not req.HasField("description")  # unset: the catalog keeps its default


def test_an_update_sends_only_the_patches_given_and_null_deletes() -> None:
    req = protocol.update_request(
        "f/m", protocol.UpdateModelIn.model_validate({"parameters": {"top_k": None}})
    )
    assert req.id == "f/m" and orjson.loads(req.parameters_patch_json) == {"top_k": None}
    assert req.metadata_patch_json == "" and not req.HasField("name")


def test_credentials_in_parameters_are_masked_and_references_shown() -> None:
    params = {"API-KEY": "sk-secret", "token": "t", "auth_token": "env:TOKEN", "ctx_len": 512}
    shown = orjson.loads(orjson.dumps(protocol.parameters_fragment(orjson.dumps(params).decode())))
    assert shown == {
        "API-KEY": protocol.MASK,
        "token": protocol.MASK,
        "auth_token": "env:TOKEN",
        "ctx_len": 512,
    }
    plain = '{"ctx_len":512}'
    assert orjson.dumps(protocol.parameters_fragment(plain)) == plain.encode()  # passed through unparsed
    m = model_pb2.Model(id="f/m", state=model_pb2.MODEL_STATE_RUNNING, parameters_json='{"api_key":"x"}')
    out = orjson.loads(protocol.model_json(m))
    assert (out["state"], out["parameters"], out["metadata"], out["object"]) == (
        "running",
        {"api_key": "****"},
        {},
        "model",
    )


@pytest.mark.parametrize(
    ("url", "endpoint", "repo"),
    [
        ("https://huggingface.co/org/repo", "", True),
        ("https://hf.co/org/repo/tree/main", "", True),
        ("https://huggingface.co/org/repo/resolve/main/m.gguf", "", False),
        ("https://example.com/org/repo", "", False),
        ("ftp://huggingface.co/org/repo", "", False),
        ("http://127.0.0.1:9/mirror/org/repo", "http://127.0.0.1:9/mirror", True),
        ("http://127.0.0.1:9/files/m.gguf", "http://127.0.0.1:9", False),
        ("http://127.0.0.1:8/org/repo", "http://127.0.0.1:9", False),
    ],
)
def test_hugging_face_repository_urls(url: str, endpoint: str, repo: bool) -> None:
    assert protocol.is_hf_repo_url(url, endpoint) is repo


def test_memory_fits_are_named_and_listed_by_id() -> None:
    reply = runner_pb.EstimateModelsResponse(runner="r1", memory_budget_bytes=100, memory_used_bytes=130)
    fits = runner_pb.ModelEstimate(
        model_id="b/b", memory_bytes=10, fit=runner_pb.FIT_FITS, basis=runner_pb.MEMORY_BASIS_HEADER
    )
    unknown = runner_pb.ModelEstimate(model_id="a/a", error="size unknown")
    out = orjson.loads(protocol.fit_list_json([(reply, fits), (reply, unknown)], None))
    assert [d["id"] for d in out["data"]] == ["a/a", "b/b"]
    assert out["data"][1] == {
        "id": "b/b",
        "fit": "fits",
        "estimate_bytes": 10,
        "budget_bytes": 100,
        "free_bytes": 0,  # never negative
        "runner": "r1",
        "basis": "header",
        "loaded": False,
        "reason": None,
    }
    assert (out["data"][0]["fit"], out["data"][0]["reason"]) == (None, "size unknown")

"""services/common/triton_source.py: the source URLs a `tensorrt` model may have, one rule for the catalog's
naming of a new object and the runner's loading of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.catalog.importers import remote_model_name
from services.common.errors import InvalidArgument
from services.common.triton_source import TritonSource, parse_triton_source
from services.runner.engines.base import LoadSpec
from services.runner.engines.tensorrt import TensorRTEngine
from services.runner.settings import RunnerSettings

BAD_URLS = (
    "triton://host/ensemble",
    "http://h:1/m",
    "triton://h:1/",
    "triton://h:1/a/b/c",
    "/tmp/m",
    "triton://h:abc/m",
    "triton://h:99999/m",
)


def runner_engine(source_url: str, root: Path) -> TensorRTEngine:
    spec = LoadSpec(
        model_id="trt/llm",
        files=[],
        mmproj=None,
        parameters={},
        metadata={"engine": "tensorrt"},
        source_url=source_url,
    )
    return TensorRTEngine(spec, RunnerSettings(root=root))


def test_the_server_and_model_a_source_url_names() -> None:
    assert parse_triton_source("triton://10.0.0.5:8001/ensemble") == TritonSource("10.0.0.5:8001", "ensemble")
    assert parse_triton_source("triton://trt.svc:8001/tensorrt_llm_bls/1") == TritonSource(
        "trt.svc:8001", "tensorrt_llm_bls", "1"
    )
    assert parse_triton_source("triton://[fd00::5]:8001/m").address == "[fd00::5]:8001"


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_catalog_and_the_runner_refuse_the_same_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as parsed:
        parse_triton_source(url)
    assert (parsed.value.code, parsed.value.param) == ("invalid_source_url", "source_url")
    with pytest.raises(InvalidArgument):
        remote_model_name(url, "tensorrt", {})
    with pytest.raises(InvalidArgument):
        runner_engine(url, tmp_path)


def test_a_new_object_is_named_after_the_model_the_runner_loads(tmp_path: Path) -> None:
    url = "triton://trt.svc:8001/tensorrt_llm_bls/3"
    assert remote_model_name(url, "tensorrt", {}) == runner_engine(url, tmp_path).model == "tensorrt_llm_bls"

"""The `tensorrt` engine against a real Triton Inference Server (nvidia-pytriton's tritonserver, CPU)
hosting a decoupled Python model with TensorRT-LLM's ensemble interface that runs the tiny GGUF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable, Unimplemented
from services.runner.engines.base import Delta, GenerateRequest, LoadSpec, Sampling
from services.runner.engines.tensorrt import TensorRTEngine, parse_source
from services.runner.settings import RunnerSettings
from tests.fakes.triton_server import TritonMissing, TritonServer, triton_server


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    try:
        with triton_server(tmp_path_factory.mktemp("triton")) as server:
            yield server
    except TritonMissing as exc:
        pytest.skip(str(exc))


def engine(
    source_url: str, tmp_path: Path, parameters: dict[str, Any] | None = None, **kw: Any
) -> TensorRTEngine:
    spec = LoadSpec(
        model_id="trt/llm",
        files=[],
        mmproj=None,
        parameters=parameters or {},
        metadata={"engine": "tensorrt"},
        source_url=source_url,
    )
    return TensorRTEngine(spec, RunnerSettings(root=tmp_path, **{"allow_private_networks": True, **kw}))


async def collect(e: TensorRTEngine, request: GenerateRequest) -> list[Delta]:
    return [d async for d in e.generate(request)]


def test_source_urls() -> None:
    assert parse_source("triton://10.0.0.5:8001/ensemble") == ("10.0.0.5:8001", "ensemble", "")
    assert parse_source("triton://trt.svc:8001/tensorrt_llm_bls/1") == (
        "trt.svc:8001",
        "tensorrt_llm_bls",
        "1",
    )
    for bad in ("triton://host/ensemble", "http://h:1/m", "triton://h:1/", "triton://h:1/a/b/c"):
        with pytest.raises(InvalidArgument):
            parse_source(bad)


async def test_load_stream_stop_and_unload(triton: TritonServer, tmp_path: Path) -> None:
    import tritonclient.grpc.aio as client_lib

    e = engine(triton.source_url(), tmp_path)
    client = client_lib.InferenceServerClient(triton.grpc_address)
    try:
        assert not await client.is_model_ready("llm")
        await e.load()
        assert await client.is_model_ready("llm")  # start = Triton's explicit load
        chat = GenerateRequest(
            messages=[{"role": "user", "content": "hello"}],
            prompt=None,
            sampling=Sampling(max_tokens=6, temperature=0, seed=3),
        )
        deltas = await collect(e, chat)
        assert len(deltas) >= 4  # token by token through Triton's decoupled stream
        assert deltas[-1].finish_reason == "length"
        assert deltas[-1].completion_tokens == 6 and deltas[-1].prompt_tokens > 5  # ChatML prompt, counted
        text = "".join(d.text for d in deltas)
        assert text.strip() and text == "".join(d.text for d in await collect(e, chat))  # greedy: same text
        assert e.effective_parameters["chat_format"] == "chatml"

        def plain(*stop: str) -> GenerateRequest:
            return GenerateRequest(
                messages=None, prompt="hello", sampling=Sampling(max_tokens=6, temperature=0, stop=stop)
            )

        whole = "".join(d.text for d in await collect(e, plain()))
        cut = whole[4:6]
        deltas = await collect(e, plain(cut))
        assert "".join(d.text for d in deltas) == whole[: whole.find(cut)]
        assert deltas[-1].finish_reason == "stop"

        with pytest.raises(Unimplemented):
            await e.embed(["x"])
    finally:
        await e.unload()
        assert not await client.is_model_ready("llm")  # stop = Triton's unload
        await client.close()


async def test_closing_the_stream_cancels(triton: TritonServer, tmp_path: Path) -> None:
    e = engine(triton.source_url(), tmp_path)
    await e.load()
    try:
        long = GenerateRequest(messages=None, prompt="the", sampling=Sampling(max_tokens=400, temperature=0))
        stream = e.generate(long)
        first = await anext(stream)
        assert first.text
        await stream.aclose()  # a client that went away
        # The model serves the next request at once (the cancelled one does not run to 400 tokens first).
        short = GenerateRequest(messages=None, prompt="the", sampling=Sampling(max_tokens=3, temperature=0))
        assert (await collect(e, short))[-1].completion_tokens == 3
    finally:
        await e.unload()


async def test_errors(triton: TritonServer, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as info:
        await engine(triton.source_url("no_such_model"), tmp_path).load()
    assert info.value.code == "triton_error"
    with pytest.raises(InvalidArgument) as bad:
        await engine(triton.source_url(), tmp_path, allow_private_networks=False).load()
    assert bad.value.code == "unsafe_source_url"
    host, _ = triton.grpc_address.rsplit(":", 1)
    e = engine(f"triton://{host}:{triton.http_port + 0}/llm", tmp_path)  # HTTP port: not gRPC
    with pytest.raises((Unavailable, FailedPrecondition)):
        await e.load()
    await e.unload()

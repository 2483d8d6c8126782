"""The `tensorrt` engine against a real Triton Inference Server (nvidia-pytriton's tritonserver, CPU)
hosting decoupled Python models with TensorRT-LLM's ensemble interface that run the tiny GGUF: `llm` (the
current ensemble: guided decoding, log-probs) and `llm_basic` (an older one without them)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable, Unimplemented
from services.runner.engines.base import (
    Constraint,
    Delta,
    GenerateRequest,
    LoadSpec,
    Sampling,
    Tool,
    refuse_unsupported,
)
from services.runner.engines.tensorrt import TensorRTEngine
from services.runner.settings import RunnerSettings
from tests.fakes.triton_server import BASIC_MODEL_NAME, TritonMissing, TritonServer, triton_server


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
        deltas = await collect(e, plain("never in the text", cut))
        assert "".join(d.text for d in deltas) == whole[: whole.find(cut)]
        assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_sequence == cut
        assert (await collect(e, plain("never in the text")))[-1].stop_sequence == ""

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


def plain(prompt: str = "hello", max_tokens: int = 6, **fields: Any) -> GenerateRequest:
    return GenerateRequest(
        messages=None, prompt=prompt, sampling=Sampling(max_tokens=max_tokens, temperature=0), **fields
    )


async def test_guided_decoding_and_logprobs(triton: TritonServer, tmp_path: Path) -> None:
    e = engine(triton.source_url(), tmp_path)
    await e.load()
    try:
        assert e.features == {"constraint", "logprobs"}  # read from the model's declared tensors
        schema = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        }
        deltas = await collect(
            e, plain(max_tokens=50, constraint=Constraint(kind="json_schema", schema=schema))
        )
        # The fake writes what a guided decoder would let through for the guide it received.
        assert json.loads("".join(d.text for d in deltas)) == {"name": "guided", "age": 42}
        assert len(deltas) > 3 and deltas[-1].finish_reason == "stop"
        deltas = await collect(e, plain(max_tokens=50, constraint=Constraint(kind="json_object")))
        assert json.loads("".join(d.text for d in deltas)) == {"answer": 1}

        text = "".join(d.text for d in await collect(e, plain()))
        deltas = await collect(e, plain(logprobs=True))
        entries = [lp for d in deltas for lp in d.logprobs]
        assert "".join(d.text for d in deltas) == text  # the same greedy text, with its log-probs
        assert "".join(lp.token for lp in entries) == text and len(entries) == 6
        # Real log-softmax values of a greedy pick: below 0, above log(1/vocab), no alternatives.
        assert all(-math.log(1000) < lp.logprob < 0 and lp.top == () for lp in entries)
        assert all(lp.bytes == lp.token.encode() for lp in entries)
        assert all(not d.logprobs for d in await collect(e, plain()))  # not asked, none
    finally:
        await e.unload()


async def test_refusals_name_the_field(triton: TritonServer, tmp_path: Path) -> None:
    e = engine(triton.source_url(), tmp_path)
    basic = engine(triton.source_url(BASIC_MODEL_NAME), tmp_path)
    await e.load()
    await basic.load()
    try:
        assert basic.features == frozenset()  # return_log_probs alone is not enough: no output_log_probs
        refused = {
            "tools": plain(tools=(Tool(name="f"),)),
            "n": plain(n=2),
            "logit_bias": plain(logit_bias={5: 1.0}),
            "grammar": plain(constraint=Constraint(kind="grammar", grammar='root ::= "a"')),
            "top_logprobs": plain(logprobs=True, top_logprobs=2),
        }
        for param, request in refused.items():
            with pytest.raises(InvalidArgument) as info:
                await collect(e, request)
            assert info.value.param == param
        for param, request in (
            ("response_format", plain(constraint=Constraint(kind="json_object"))),
            ("logprobs", plain(logprobs=True)),
        ):
            with pytest.raises(InvalidArgument) as info:
                refuse_unsupported(basic, request)  # the runner core's gate, before generation
            assert info.value.param == param
            with pytest.raises(InvalidArgument):
                await collect(basic, request)
        # The older interface still generates, counts and stops as before.
        deltas = await collect(basic, plain(max_tokens=4))
        assert deltas[-1].completion_tokens == 4 and deltas[-1].prompt_tokens > 0
    finally:
        await e.unload()
        await basic.unload()


@pytest.mark.parametrize("model", ["llm", BASIC_MODEL_NAME])
async def test_seed_reaches_either_input_name(triton: TritonServer, tmp_path: Path, model: str) -> None:
    # `llm` declares the current ensemble's `seed`, `llm_basic` the older `random_seed`.
    e = engine(triton.source_url(model), tmp_path)
    await e.load()
    try:

        async def sampled(seed: int) -> str:
            hot = Sampling(max_tokens=8, temperature=1.5, top_k=0, top_p=1.0, seed=seed)
            return "".join(d.text for d in await collect(e, GenerateRequest(None, "the", sampling=hot)))

        first = await sampled(11)
        assert await sampled(11) == first
        assert await sampled(12) != first
    finally:
        await e.unload()

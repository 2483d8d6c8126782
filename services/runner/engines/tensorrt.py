"""The `tensorrt` engine: a TensorRT-LLM model served by a Triton Inference Server, over gRPC.

The model object names the server and the Triton model: `source_url` `triton://HOST:GRPC_PORT/MODEL`
(optionally `/MODEL/VERSION`), `metadata.engine` `tensorrt`. The runner speaks the interface of
tensorrtllm_backend's `ensemble` / `tensorrt_llm_bls` models: `text_input` (BYTES) and `max_tokens`
(INT32) in, `text_output` (BYTES) out, the optional sampling inputs (`temperature`, `top_p`, `top_k`,
`seed` or the older `random_seed`, `repetition_penalty`, ... with the data types the server declares),
and `stream` for decoupled token streaming. Inputs the model does not declare are not sent. Stop strings
are applied here (the request is cancelled on the server when one is reached).

Beyond sampling, a model honours what its config declares, and `features` (read from the model's metadata
at load) says so; the runner's core refuses the rest before generation:
- `response_format` (feature "constraint") with the guided decoding inputs `guided_decoding_guide_type` /
  `guided_decoding_guide`: json_object is guide type "json", json_schema is "json_schema" with the schema's
  text. A GBNF grammar is refused: TensorRT-LLM's "ebnf_grammar" (XGrammar's EBNF) is another dialect.
- `logprobs` with the `return_log_probs` input and the `output_log_probs` output: the sampled tokens'
  log-probabilities only, so `top_logprobs` > 0 is refused. A streamed response's log-probs become one
  entry for that response's text (their sum when the response holds several tokens).
- `n`, `tools` and `logit_bias` are never declared (refused; the ensemble's `num_return_sequences` could
  serve `n` one day, its `embedding_bias_words` are words, not token ids).

Start/stop are Triton's explicit model control (load/unload); a server that does not allow model control
(models loaded at its start) is fine as long as the model is ready, and is then never told to unload.
Triton takes text, so chats become a prompt here (services/runner/engines/prompt.py). Usage: exact when
the model also returns `num_input_tokens` / `num_output_tokens` (asked for with `return_num_input_tokens`
/ `return_num_output_tokens` where the model declares them, as current ensembles do), else the streamed
responses are counted (one per decoding step) and the prompt is 0 tokens. Memory lives on the Triton
server: ~0 here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import numpy as np
import orjson

from services.common import netsafety
from services.common.errors import FailedPrecondition, InvalidArgument, JanError, Unavailable, Unimplemented
from services.common.triton_source import parse_triton_source
from services.runner.engines.base import (
    Delta,
    Engine,
    GenerateRequest,
    LoadSpec,
    MemoryEstimate,
    TokenLogprob,
    refuse_unsupported,
)
from services.runner.engines.prompt import Render, StopFilter, reported_stop, resolve_format
from services.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 16  # requests in flight at once; Triton batches them (in-flight batching)
_NUMPY = {
    "BOOL": np.bool_,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
# TensorRT-LLM's guide types of the runner's constraints (a GBNF grammar has none).
GUIDE_TYPES = {"json_object": "json", "json_schema": "json_schema"}
# Feature -> (inputs, outputs) the model's config must declare for it.
FEATURE_TENSORS: dict[str, tuple[set[str], set[str]]] = {
    "constraint": ({"guided_decoding_guide_type", "guided_decoding_guide"}, set()),
    "logprobs": ({"return_log_probs"}, {"output_log_probs"}),
}


def triton_error(exc: Exception, address: str, model: str, doing: str) -> JanError:
    """The runner's error for a Triton client exception (decided by its gRPC status, not its text)."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = str(getattr(exc, "message", lambda: "")() or exc)[:400]
    if status.endswith("UNAVAILABLE") or status.endswith("DEADLINE_EXCEEDED"):
        return Unavailable(
            f"the Triton server at {address} does not answer ({doing} {model}): {message}",
            code="triton_unavailable",
        )
    if status.endswith("INVALID_ARGUMENT") and doing == "generating with":
        return InvalidArgument(
            f"Triton refused the request for {model}: {message}", code="triton_invalid_request"
        )
    return FailedPrecondition(
        f"the Triton server at {address} failed {doing} {model}: {message}", code="triton_error"
    )


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, spec: LoadSpec, settings: RunnerSettings) -> None:
        super().__init__(spec)
        self.settings = settings
        source = parse_triton_source(spec.source_url)
        self.address, self.model, self.version = source.address, source.model, source.version
        self.n_parallel = max(1, int(spec.parameters.get("n_parallel") or DEFAULT_SLOTS))
        self._slots = asyncio.Semaphore(self.n_parallel)
        self.chat_format = ""
        self._render: Render | None = None
        self._client: Any = None
        self._inputs: dict[str, str] = {}  # declared input name -> Triton data type
        self._outputs: set[str] = set()
        self._batched = True
        self._loaded_by_us = False

    @classmethod
    def estimate(cls, spec: LoadSpec) -> MemoryEstimate:
        return MemoryEstimate(0, "remote")  # the weights live on the Triton server's GPUs

    @property
    def slots(self) -> int:
        return self.n_parallel

    @property
    def effective_parameters(self) -> dict[str, Any]:
        return {**self.spec.parameters, "n_parallel": self.n_parallel, "chat_format": self.chat_format}

    # --- life cycle ---------------------------------------------------------------------------------------

    async def load(self) -> None:
        import tritonclient.grpc.aio as triton
        from tritonclient.utils import InferenceServerException

        chosen = resolve_format(self.spec.parameters)
        self.chat_format, self._render = chosen.name, chosen.render
        allow_private = self.settings.allow_private_networks
        await asyncio.to_thread(
            netsafety.require_safe_url, f"http://{self.address}/", allow_private=allow_private
        )
        self._client = triton.InferenceServerClient(self.address)
        timeout = self.settings.triton_timeout_s
        try:
            try:
                await self._client.load_model(self.model, client_timeout=timeout)
                self._loaded_by_us = True
            except InferenceServerException as exc:
                # A server without explicit model control refuses to load: fine when the model is ready.
                if str(exc.status() or "").endswith("UNAVAILABLE") or not await self._ready():
                    raise
                log.info(
                    "%s: Triton does not allow model control; %s is ready", self.spec.model_id, self.model
                )
            if not await self._ready():
                raise FailedPrecondition(
                    f"Triton at {self.address} loaded {self.model} but it is not ready",
                    code="triton_not_ready",
                )
            meta = await self._client.get_model_metadata(self.model, self.version, as_json=True)
            config = await self._client.get_model_config(self.model, self.version, as_json=True)
        except InferenceServerException as exc:
            raise triton_error(exc, self.address, self.model, "loading") from None
        self._inputs = {i["name"]: i["datatype"] for i in meta.get("inputs", [])}
        self._outputs = {o["name"] for o in meta.get("outputs", [])}
        self._batched = int(config.get("config", {}).get("max_batch_size") or 0) > 0
        missing = {"text_input", "max_tokens"} - set(self._inputs) or {"text_output"} - self._outputs
        if missing:
            raise FailedPrecondition(
                f"the Triton model {self.model} lacks {', '.join(sorted(missing))}: it does not have the "
                "interface of TensorRT-LLM's ensemble / tensorrt_llm_bls models",
                code="triton_interface_mismatch",
            )
        self.features = frozenset(
            feature
            for feature, (inputs, outputs) in FEATURE_TENSORS.items()
            if inputs <= set(self._inputs) and outputs <= self._outputs
        )

    async def _ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(await self._client.is_model_ready(self.model, self.version))
        except InferenceServerException:
            return False

    async def unload(self) -> None:
        if self._client is None:
            return
        try:
            if self._loaded_by_us and self.spec.parameters.get("triton_unload", True):
                with contextlib.suppress(Exception):  # a server that went away has nothing loaded
                    await self._client.unload_model(self.model, client_timeout=self.settings.triton_timeout_s)
        finally:
            await self._client.close()
            self._client = None

    # --- generation ---------------------------------------------------------------------------------------

    def _tensor(self, name: str, values: list[Any]) -> Any:
        from tritonclient.grpc import InferInput

        datatype = self._inputs[name]
        array = np.array(values, dtype=_NUMPY.get(datatype, np.object_))
        if datatype == "BYTES":
            array = np.array([str(v).encode() for v in values], dtype=np.object_)
        array = array.reshape((1, len(values)) if self._batched else (len(values),))
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _request_inputs(self, request: GenerateRequest) -> tuple[list[Any], list[str]]:
        if request.messages is not None:
            assert self._render is not None
            prompt, stops, _ = self._render(request.messages, {})
        else:
            prompt, stops = request.prompt or "", []
        s = request.sampling
        stops = [*stops, *s.stop]
        wanted: dict[str, list[Any]] = {
            "text_input": [prompt],
            "max_tokens": [s.max_tokens if s.max_tokens > 0 else 512],
            "temperature": [s.temperature],
            "top_p": [s.top_p],
            "top_k": [s.top_k],
            "repetition_penalty": [s.repeat_penalty],
            "presence_penalty": [s.presence_penalty],
            "frequency_penalty": [s.frequency_penalty],
            "stream": [True],
        }
        if s.seed is not None:
            # `seed` in current ensembles, `random_seed` in older ones: a model declares one of them.
            wanted["seed"] = wanted["random_seed"] = [s.seed & 0xFFFFFFFFFFFFFFFF]
        # Current ensembles count tokens only when asked.
        wanted["return_num_input_tokens"] = wanted["return_num_output_tokens"] = [True]
        if request.constraint is not None:
            wanted["guided_decoding_guide_type"] = [GUIDE_TYPES[request.constraint.kind]]
            if request.constraint.kind == "json_schema":
                wanted["guided_decoding_guide"] = [orjson.dumps(request.constraint.schema or {}).decode()]
        if request.logprobs:
            wanted["return_log_probs"] = [True]
        # Stop strings are applied here, not sent as `stop_words`: the server would already have streamed
        # the start of a stop string that spans tokens, and what was sent cannot be taken back.
        inputs = [self._tensor(name, values) for name, values in wanted.items() if name in self._inputs]
        return inputs, stops

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        from tritonclient.utils import InferenceServerException

        if self._client is None:
            raise FailedPrecondition(f"{self.spec.model_id} is not loaded", code="model_not_loaded")
        # The core refuses the features this model lacks before it calls here; called on its own, the engine
        # does not drop them either.
        refuse_unsupported(self, request)
        if request.top_logprobs > 0:
            raise InvalidArgument(
                "top_logprobs is not supported by TensorRT-LLM, which returns only the sampled token's "
                "log-probability: ask for logprobs with top_logprobs 0",
                code="unsupported_parameter",
                param="top_logprobs",
            )
        inputs, stops = self._request_inputs(request)
        stop = StopFilter(stops)
        max_tokens = request.sampling.max_tokens
        one = {
            "model_name": self.model,
            "model_version": self.version,
            "inputs": inputs,
            "request_id": uuid.uuid4().hex,
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            # One request per stream: once it is written, Triton ends the stream after its final response.
            yield one

        prompt_tokens = completion_tokens = steps = logprob_count = 0
        # Log-probs wait for the text they belong to (a stop string may hold text back).
        pending: list[TokenLogprob] = []
        carried: list[float] = []  # of responses that brought no text: they join the next piece
        async with self._slots:
            responses = self._client.stream_infer(requests())
            try:
                async for result, error in responses:
                    if error is not None:
                        raise triton_error(error, self.address, self.model, "generating with")
                    if request.logprobs and (values := result.as_numpy("output_log_probs")) is not None:
                        carried += [float(v) for v in values.reshape(-1)]  # one beam: [batch, beam, tokens]
                        logprob_count += values.size
                    if "text_output" in self._outputs:
                        out = result.as_numpy("text_output")
                        if out is not None and out.size:
                            piece = b"".join(
                                v if isinstance(v, bytes) else str(v).encode() for v in out.reshape(-1)
                            ).decode(errors="replace")
                            if piece:
                                steps += 1
                                if carried:
                                    pending.append(TokenLogprob(piece, piece.encode(), sum(carried)))
                                    carried = []
                                text = stop.feed(piece)
                                if text:
                                    yield Delta(text=text, logprobs=tuple(pending))
                                    pending = []
                    for name in ("num_input_tokens", "num_output_tokens"):
                        if name in self._outputs and (counted := result.as_numpy(name)) is not None:
                            value = int(counted.reshape(-1)[0]) if counted.size else 0
                            if name == "num_input_tokens":
                                prompt_tokens = value
                            else:
                                completion_tokens = value
                    if stop.stopped:
                        break
            except InferenceServerException as exc:
                raise triton_error(exc, self.address, self.model, "generating with") from None
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(
                    f"the Triton server at {self.address} broke the stream of {self.model}: "
                    f"{exc.code().name} {exc.details()}",
                    code="triton_unavailable",
                ) from None
            finally:
                # Stops the request on the server too (a client that went away, a stop string reached).
                with contextlib.suppress(Exception):
                    responses.cancel()
        if request.logprobs and steps and not logprob_count:
            raise FailedPrecondition(
                f"the Triton model {self.model} declares output_log_probs but returned none",
                code="triton_interface_mismatch",
            )
        completion_tokens = completion_tokens or steps
        finish = "stop" if stop.stopped or not 0 < max_tokens <= completion_tokens else "length"
        yield Delta(
            text=stop.flush(),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            logprobs=tuple(pending),
            stop_sequence=reported_stop(stop.matched, request.sampling.stop),
        )

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        raise Unimplemented(
            f"{self.spec.model_id} runs on Triton (TensorRT-LLM), which serves no embeddings",
            code="embeddings_unsupported",
        )

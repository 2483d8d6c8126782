"""The llama.cpp engine (llama-cpp-python's low-level API): continuous batching in one context.

A loaded model is one set of weights and one llama.cpp context holding `n_parallel` sequences, the
slots. Every step decodes one batch holding the next token of every generating slot and a chunk of the
prompts being read, then samples each slot with its own sampler chain (temperature, top-k/p, min-p,
penalties, seed). New requests join between steps; a request beyond the slots waits in a FIFO (the
runner's core bounds it). On 2 cores, 4 streams decoded together give ~1.5 times the tokens/s of
one, 8 give ~2 times; separate contexts per request give nothing. All compute runs on the process's
one compute thread (compute.py explains why); llama.cpp objects are never used from two threads at once.

Prompts: the model object's prompt fields (`pre_prompt`, `user_prompt`, `ai_prompt`) win; else the
GGUF's own `tokenizer.chat_template`; else `parameters.chat_format` names one of llama-cpp-python's
formats; else a choice by architecture (Gemma → "gemma", everything else → "chatml"), because
llama-cpp-python's own silent fallback ("llama-2") makes Gemma-style models stop at once or babble.

Embeddings use a second context on the same weights (mean pooling, L2-normalised as llama-server and
OpenAI return them), one input per step, so a long embedding request never stalls generation for long.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from services.common.capabilities import is_set
from services.common.errors import FailedPrecondition, InvalidArgument
from services.runner.engines.base import (
    Delta,
    Engine,
    GenerateRequest,
    LoadSpec,
    MemoryBasis,
    MemoryEstimate,
    Tokenized,
    TokenizeRequest,
)
from services.runner.engines.compute import ComputeThread
from services.runner.engines.compute import shared as shared_compute
from services.runner.engines.llamacpp.batcher import (
    COMPUTE_OVERHEAD,
    Batcher,
    EmbedJob,
    Job,
    SlotView,
    common_prefix,
    malloc_trim,
)
from services.runner.engines.llamacpp.gguf import kv_bytes_per_token_of
from services.runner.engines.llamacpp.json_schema import JSON_OBJECT_GBNF, schema_to_gbnf
from services.runner.engines.output import ChoiceOutput
from services.runner.engines.prompt import Render, resolve_format
from services.runner.engines.reasoning import ReasoningSplitter, opened_by_prompt
from services.runner.engines.tools import (
    NAMED_FORMATS_WITHOUT_SYSTEM,
    ToolCallParser,
    ToolFormat,
    ToolPlan,
    detect_format,
    plan_tools,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# KV cache bytes per token of a 7B-class model: the estimate's figure when no GGUF header can be read.
FALLBACK_KV_BYTES = 256 * 1024


class LlamaCppEngine(Engine):
    name = "llamacpp"
    features = frozenset({"constraint", "grammar", "tools", "logprobs", "n", "logit_bias"})

    def __init__(
        self,
        spec: LoadSpec,
        *,
        threads: int = 0,
        default_ctx_len: int = 4096,
        compute: ComputeThread | None = None,
    ) -> None:
        super().__init__(spec)
        params = spec.parameters
        self.ctx_len = int(params.get("ctx_len") or default_ctx_len)
        self.ngl = int(params.get("ngl") or 0)
        self.n_parallel = max(1, int(params.get("n_parallel") or 1))
        self.threads = int(params.get("cpu_threads") or threads or os.cpu_count() or 1)
        self.embedding_only = is_set(params.get("embedding", False)) and is_set(
            params.get("embedding_only", False)
        )
        self.chat_format = ""
        self._compute = compute or shared_compute()
        self._format: Render | None = None
        # How tools reach the prompt and come back (tools.py): the template's own format, else generic.
        self.tool_format: ToolFormat = "generic"
        self._estimate: MemoryEstimate | None = None
        self._batcher: Batcher | None = None
        if spec.mmproj is not None:  # its projector reads images
            self.features = self.features | {"images"}

    def unsupported(self, feature: str) -> str:
        if feature == "images":
            return f"{self.spec.model_id} cannot see images: it has no vision projector (mmproj)"
        return super().unsupported(feature)

    # --- memory -------------------------------------------------------------------------------------------

    @classmethod
    def estimate(cls, spec: LoadSpec) -> MemoryEstimate:
        """Weights once (all slots share one context), the KV cache of every slot, compute buffers. With no
        files (not downloaded here), the declared sizes stand for the weights."""
        params = spec.parameters
        ctx = int(params.get("ctx_len") or 4096)
        n = max(1, int(params.get("n_parallel") or 1))
        if not spec.files:
            kv = n * ctx * FALLBACK_KV_BYTES
            return MemoryEstimate(spec.declared_bytes + kv + COMPUTE_OVERHEAD, "size")
        weights = sum(p.stat().st_size for p in spec.files) + (
            spec.mmproj.stat().st_size if spec.mmproj else 0
        )
        basis: MemoryBasis = "header"
        try:
            per_token = kv_bytes_per_token_of(spec.files[0])
        except Exception:  # an unreadable header: the files' sizes, and a 7B-class KV cache
            per_token, basis = FALLBACK_KV_BYTES, "size"
        return MemoryEstimate(weights + n * ctx * per_token + COMPUTE_OVERHEAD, basis)

    @property
    def memory_estimate(self) -> MemoryEstimate:
        if self._estimate is None:  # estimated once: it reads the file's header
            spec = dataclasses.replace(
                self.spec,
                parameters={**self.spec.parameters, "ctx_len": self.ctx_len, "n_parallel": self.n_parallel},
            )
            self._estimate = self.estimate(spec)
        return self._estimate

    @property
    def memory_bytes(self) -> int:
        extra = self._batcher.embedding_bytes if self._batcher is not None else 0
        return self.memory_estimate.bytes + extra

    @property
    def slots(self) -> int:
        return self.n_parallel

    def slot_views(self) -> list[SlotView]:
        """The slots as they are now (a snapshot; see `Batcher.slot_views`)."""
        return self._batcher.slot_views() if self._batcher is not None else []

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the batched scheduler (see `Batcher.stats`)."""
        return dict(self._batcher.stats) if self._batcher is not None else {}

    @property
    def effective_parameters(self) -> dict[str, Any]:
        return {
            **self.spec.parameters,
            "ctx_len": self.ctx_len,
            "ngl": self.ngl,
            "n_parallel": self.n_parallel,
            "cpu_threads": self.threads,
            "chat_format": self.chat_format,
        }

    # --- life cycle ---------------------------------------------------------------------------------------

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        # Reading weights and making contexts runs no compute: a thread of its own that then ends, so that
        # no OpenMP team outlives it (see compute.py).
        self._batcher = await _in_new_thread(
            lambda: Batcher(
                path=self.spec.files[0],
                loop=loop,
                ctx_len=self.ctx_len,
                n_parallel=0 if self.embedding_only else self.n_parallel,
                threads=self.threads,
                ngl=self.ngl,
                mmproj=None if self.embedding_only else self.spec.mmproj,
            ),
            name=f"load-{self.spec.model_id}",
        )
        self.ctx_len = self._batcher.ctx_len
        self._format = self._choose_format(self._batcher)
        self._compute.attach(self._batcher)
        prefix = self._chat_prefix(self._batcher)
        if prefix:
            batcher = self._batcher
            await asyncio.wrap_future(self._compute.submit(lambda: batcher.prefill(prefix)))
        await asyncio.to_thread(lambda: self.memory_bytes)

    async def unload(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is None:
            return

        def close() -> None:
            self._compute.detach(batcher)
            batcher.close()

        await asyncio.wrap_future(self._compute.submit(close))
        malloc_trim()

    # --- prompts ------------------------------------------------------------------------------------------

    def _choose_format(self, model: Batcher) -> Render:
        chosen = resolve_format(
            self.spec.parameters,
            gguf_template=model.metadata.get("tokenizer.chat_template"),
            architecture=str(model.metadata.get("general.architecture", "")),
            bos_token=model.token_text(model.bos),
            eos_token=model.token_text(model.eos),
        )
        self.chat_format = chosen.name
        self.tool_format = detect_format(chosen.template)
        return chosen.render

    def _prompt(
        self, request: GenerateRequest, plan: ToolPlan | None = None
    ) -> tuple[bytes, bool, bool, list[str]]:
        """The prompt's bytes, whether to add BOS, whether special tokens are parsed, and stop strings.
        A chat is rendered as the tool plan says (its messages, the template's `tools`)."""
        if request.messages is not None:
            assert self._format is not None
            messages, extra = request.messages, {}
            if plan is not None:
                messages, extra = plan.messages, dict(plan.template_kwargs)
                if plan.tools is not None:
                    extra["tools"] = plan.tools
            prompt, stops, has_special = self._format(messages, extra)
            return prompt.encode(), not has_special, True, stops
        return (request.prompt or "").encode(), True, False, []

    def _chat_prefix(self, batcher: Batcher) -> list[int]:
        """The tokens every chat prompt of this model starts with (BOS, the template's opening, the model
        object's system prompt): rendered for two different messages, the tokens they share."""
        if self.embedding_only or not batcher.slots:
            return []
        try:
            rendered = [
                self._prompt(GenerateRequest(messages=[{"role": "user", "content": c}], prompt=None))
                for c in ("x", "y")
            ]
        except Exception:  # a template that cannot render one user message: no shared opening then
            log.debug("no chat prefix for %s", self.spec.model_id, exc_info=True)
            return []
        a, b = (batcher.tokenize(text, add_bos, special) for text, add_bos, special, _ in rendered)
        return a[: common_prefix(a, b)]

    # --- generation ---------------------------------------------------------------------------------------

    def _ready(self) -> Batcher:
        if self._batcher is None:
            raise FailedPrecondition(f"{self.spec.model_id} is not loaded", code="model_not_loaded")
        return self._batcher

    def _grammar(self, request: GenerateRequest, plan: ToolPlan | None) -> tuple[str, str]:
        """The GBNF the output must follow ("" = free) and the request field it comes from."""
        if plan is not None and plan.grammar is not None:  # tools: it includes a response_format's schema
            return plan.grammar.gbnf(schema_to_gbnf(plan.grammar.schema, param="tools")), "tools"
        c = request.constraint
        if c is None:
            return "", ""
        if c.kind == "grammar":
            return c.grammar, "grammar"
        if c.kind == "json_object":
            return JSON_OBJECT_GBNF, "response_format"
        return schema_to_gbnf(c.schema or {}, param="response_format"), "response_format"

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        batcher = self._ready()
        if self.embedding_only:
            raise FailedPrecondition(
                f"{self.spec.model_id} is an embedding model (parameters.embedding_only): no generation",
                code="embedding_only",
            )
        if request.n > len(batcher.slots):
            raise InvalidArgument(
                f"n is {request.n} and {self.spec.model_id} generates at most {len(batcher.slots)} at once "
                "(parameters.n_parallel)",
                param="n",
            )
        plan = self._plan(request) if request.messages is not None else None
        grammar, grammar_param = self._grammar(request, plan)
        text, add_bos, special, stops = self._prompt(request, plan)
        outputs = [self._output(request, plan, text) for _ in range(request.n)]
        job = Job(
            request=request,
            text=text,
            add_bos=add_bos,
            special=special,
            stops=stops,
            grammar=grammar,
            grammar_param=grammar_param,
            # Tool markers are read as text even where they are special tokens ([TOOL_CALLS]).
            render_special=plan is not None and plan.parse,
            images=[image.data for image in request.images],
        )
        batcher.submit(job, self._compute)
        finished = 0
        try:
            while finished < request.n:
                items = [await job.queue.get()]
                while not job.queue.empty():  # everything already waiting goes out at once
                    items.append(job.queue.get_nowait())
                for delta in _merged(items):
                    finished += delta.finish_reason is not None
                    yield outputs[delta.index].apply(delta)
        finally:
            if finished < request.n:  # failed, or the client went away: the slots are freed next step
                job.cancelled = True
                self._compute.wake()

    def _plan(self, request: GenerateRequest) -> ToolPlan:
        """How a chat is rendered and constrained with its tools (tools.py)."""
        return plan_tools(
            request, self.tool_format, system_role=self.chat_format not in NAMED_FORMATS_WITHOUT_SYSTEM
        )

    def _output(self, request: GenerateRequest, plan: ToolPlan | None, prompt: bytes) -> ChoiceOutput:
        """How one choice's text becomes the answer's parts (reasoning, content, tool calls)."""
        reasoning = None
        if request.messages is not None and request.reasoning == "separate" and request.constraint is None:
            reasoning = ReasoningSplitter(opened_by_prompt(prompt.decode(errors="replace")))
        tools = ToolCallParser(plan.format) if plan is not None and plan.parse else None
        return ChoiceOutput(reasoning, tools)

    # --- tokens -------------------------------------------------------------------------------------------

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        batcher = self._ready()
        if request.messages is not None:
            if self._format is None:
                raise FailedPrecondition(
                    f"{self.spec.model_id} has no chat template", code="no_chat_template"
                )
            chat = request.as_chat()
            # Rendered as a generation renders it: earlier tool calls and results, and the tools offered.
            text, add_bos, special, _ = self._prompt(chat, self._plan(chat))
        else:
            if request.tools:
                raise InvalidArgument("tools need chat messages, not a text", param="tools")
            text, add_bos, special = (request.text or "").encode(), request.add_special, False
        tokens = batcher.tokenize(text, add_bos, special)
        pieces = [batcher.piece(t).decode(errors="replace") for t in tokens]
        return Tokenized(tokens=tokens, pieces=pieces, max_model_len=self.ctx_len)

    async def detokenize(self, tokens: list[int]) -> str:
        batcher = self._ready()
        bad = [t for t in tokens if not 0 <= t < batcher.n_vocab]
        if bad:
            raise InvalidArgument(
                f"token {bad[0]} is not in the vocabulary of {self.spec.model_id} (0-{batcher.n_vocab - 1})",
                param="tokens",
            )
        return b"".join(batcher.piece(t) for t in tokens).decode(errors="replace")

    # --- embeddings ---------------------------------------------------------------------------------------

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        batcher = self._ready()
        job = EmbedJob(inputs=[t.encode() for t in inputs], future=asyncio.get_running_loop().create_future())
        batcher.submit_embedding(job, self._compute)
        try:
            return await job.future
        finally:
            job.cancelled = True


async def _in_new_thread(fn: Callable[[], T], name: str) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _merged(items: list[Delta | BaseException]) -> list[Delta]:
    """What the compute thread delivered at once, as one delta per choice (and its final one apart);
    an error raises."""
    out: list[Delta] = []
    open_at: dict[int, int] = {}  # choice -> position in `out` of its delta still open to more text
    for item in items:
        if isinstance(item, BaseException):
            raise item
        at = open_at.pop(item.index, None)
        if at is not None:
            previous = out[at]
            out[at] = dataclasses.replace(
                item, text=previous.text + item.text, logprobs=previous.logprobs + item.logprobs
            )
        else:
            at = len(out)
            out.append(item)
        if item.finish_reason is None:
            open_at[item.index] = at
    return out

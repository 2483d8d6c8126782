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

from services.common.errors import FailedPrecondition, InvalidArgument
from services.runner.engines.base import Delta, Engine, GenerateRequest, LoadSpec
from services.runner.engines.compute import ComputeThread
from services.runner.engines.compute import shared as shared_compute
from services.runner.engines.llamacpp.batcher import (
    COMPUTE_OVERHEAD,
    Batcher,
    EmbedJob,
    Job,
    common_prefix,
    malloc_trim,
)
from services.runner.engines.llamacpp.gguf import gguf_facts, kv_bytes_per_token
from services.runner.engines.prompt import CHAT_FORMATS, spec_prompt, stop_list

log = logging.getLogger(__name__)
T = TypeVar("T")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class LlamaCppEngine(Engine):
    name = "llamacpp"

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
        self.embedding_only = _truthy(params.get("embedding", False)) and _truthy(
            params.get("embedding_only", False)
        )
        self.chat_format = ""
        self._compute = compute or shared_compute()
        self._format: Callable[[list[dict[str, str]]], tuple[str, list[str], bool]] | None = None
        self._memory: int | None = None
        self._batcher: Batcher | None = None

    # --- memory -------------------------------------------------------------------------------------------

    @classmethod
    def estimate_memory(cls, spec: LoadSpec) -> int:
        """Weights once (all slots share one context), the KV cache of every slot, compute buffers."""
        weights = sum(p.stat().st_size for p in spec.files) + (
            spec.mmproj.stat().st_size if spec.mmproj else 0
        )
        params = spec.parameters
        ctx = int(params.get("ctx_len") or 4096)
        n = max(1, int(params.get("n_parallel") or 1))
        try:
            per_token = kv_bytes_per_token(gguf_facts(spec.files[0]))
        except Exception:
            per_token = 256 * 1024  # a 7B-class model, when the header cannot be read
        return weights + n * ctx * per_token + COMPUTE_OVERHEAD

    @property
    def memory_bytes(self) -> int:
        if self._memory is None:  # estimated once: it reads the file's header
            spec = LoadSpec(
                model_id=self.spec.model_id,
                files=self.spec.files,
                mmproj=self.spec.mmproj,
                parameters={**self.spec.parameters, "ctx_len": self.ctx_len, "n_parallel": self.n_parallel},
                metadata=self.spec.metadata,
            )
            self._memory = self.estimate_memory(spec)
        extra = self._batcher.embedding_bytes if self._batcher is not None else 0
        return self._memory + extra

    @property
    def slots(self) -> int:
        return self.n_parallel

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

    def _choose_format(self, model: Batcher) -> Callable[[list[dict[str, str]]], tuple[str, list[str], bool]]:
        from llama_cpp import llama_chat_format as fmt

        params = self.spec.parameters
        if any(params.get(k) for k in ("pre_prompt", "user_prompt", "ai_prompt")):
            self.chat_format = "model object prompt fields"
            return self._spec_prompt
        template = model.metadata.get("tokenizer.chat_template")
        named = params.get("chat_format")
        if named:
            if named not in CHAT_FORMATS:
                raise InvalidArgument(
                    f"chat_format must be one of {', '.join(CHAT_FORMATS)}", param="chat_format"
                )
            return self._named(named)
        if template:
            formatter = fmt.Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_text(model.eos),
                bos_token=model.token_text(model.bos),
            )
            self.chat_format = "gguf chat template"

            def render(messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
                result = formatter(messages=messages)  # type: ignore[arg-type]
                return result.prompt, stop_list(result.stop), True

            return render
        arch = str(model.metadata.get("general.architecture", ""))
        return self._named("gemma" if arch.startswith("gemma") else "chatml")

    def _named(self, name: str) -> Callable[[list[dict[str, str]]], tuple[str, list[str], bool]]:
        from llama_cpp import llama_chat_format as fmt

        function = getattr(
            fmt, "format_" + name.replace("-", "_").replace("llama_2", "llama2").replace("llama_3", "llama3")
        )
        self.chat_format = name

        def render(messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
            result = function(messages=messages)
            return result.prompt, stop_list(result.stop), False

        return render

    def _spec_prompt(self, messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
        prompt, stops = spec_prompt(self.spec.parameters, messages)
        return prompt, stops, False

    def _prompt(self, request: GenerateRequest) -> tuple[bytes, bool, bool, list[str]]:
        """The prompt's bytes, whether to add BOS, whether special tokens are parsed, and stop strings."""
        if request.messages is not None:
            assert self._format is not None
            prompt, stops, has_special = self._format(request.messages)
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

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        batcher = self._ready()
        if self.embedding_only:
            raise FailedPrecondition(
                f"{self.spec.model_id} is an embedding model (parameters.embedding_only): no generation",
                code="embedding_only",
            )
        text, add_bos, special, stops = self._prompt(request)
        job = Job(request=request, text=text, add_bos=add_bos, special=special, stops=stops)
        batcher.submit(job, self._compute)
        done = False
        try:
            while True:
                item = await job.queue.get()
                pieces: list[str] = []
                final: Delta | None = None
                while True:  # everything already waiting goes out as one delta
                    if isinstance(item, BaseException):
                        done = True
                        raise item
                    pieces.append(item.text)
                    if item.finish_reason is not None:
                        final = item
                        break
                    if job.queue.empty():
                        break
                    item = job.queue.get_nowait()
                if final is not None:
                    done = True
                    yield dataclasses.replace(final, text="".join(pieces))
                    return
                yield Delta(text="".join(pieces))
        finally:
            if not done:  # the client went away: the slot is freed at the next step
                job.cancelled = True
                self._compute.wake()

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

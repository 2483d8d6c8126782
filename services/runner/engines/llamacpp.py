"""The llama.cpp engine (llama-cpp-python).

A `Llama` object must never be used from two threads at once (it crashes the process), so each loaded
instance lives on a worker thread of its own and requests take turns on it through a FIFO of free
slots. `n_parallel` instances give that many concurrent requests (each with its own weights and KV
cache: the memory estimate counts them all). Embeddings use a separate instance in embedding mode,
created on first use, so an embedding request never waits behind a long generation.

Prompts: the model object's prompt fields (`pre_prompt`, `user_prompt`, `ai_prompt`) win; else the
GGUF's own `tokenizer.chat_template`; else `parameters.chat_format` names one of llama-cpp-python's
formats; else a choice by architecture (Gemma → "gemma", everything else → "chatml"), because
llama-cpp-python's own silent fallback ("llama-2") makes Gemma-style models stop at once or babble.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import random
import struct
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument
from services.runner.engines.base import Delta, Engine, GenerateRequest, LoadSpec

log = logging.getLogger(__name__)

# Named prompt formats of llama-cpp-python usable as `parameters.chat_format`.
CHAT_FORMATS = ("chatml", "gemma", "llama-2", "llama-3", "mistral-instruct", "zephyr", "alpaca", "qwen")
COMPUTE_OVERHEAD = 96 * 1024 * 1024  # scratch buffers of a context, measured roughly on CPU builds


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def _gguf_facts(path: Path) -> dict[str, Any]:
    """The scalar header values of a GGUF file (arrays such as the vocabulary are skipped), read
    without loading the model: the memory estimate needs a few of them before deciding to load."""
    facts: dict[str, Any] = {}
    with open(path, "rb") as f:
        magic, _version, _tensors, count = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")

        def string() -> bytes:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n)

        def skip(kind: int) -> None:
            if kind == 8:
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, os.SEEK_CUR)
            elif kind == 9:
                item, n = struct.unpack("<IQ", f.read(12))
                if item in _SCALARS:
                    f.seek(n * struct.calcsize(_SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(n):
                        skip(item)
            else:
                f.seek(struct.calcsize(_SCALARS[kind]), os.SEEK_CUR)

        for _ in range(count):
            key = string().decode(errors="replace")
            (kind,) = struct.unpack("<I", f.read(4))
            if kind in _SCALARS:
                fmt = _SCALARS[kind]
                (facts[key],) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
            elif kind == 8:
                facts[key] = string().decode(errors="replace")
            else:
                skip(kind)
    return facts


def _kv_bytes_per_token(facts: dict[str, Any]) -> int:
    arch = facts.get("general.architecture", "llama")
    layers = int(facts.get(f"{arch}.block_count", 32))
    embd = int(facts.get(f"{arch}.embedding_length", 4096))
    heads = int(facts.get(f"{arch}.attention.head_count", 32)) or 1
    heads_kv = int(facts.get(f"{arch}.attention.head_count_kv", heads)) or heads
    key_len = int(facts.get(f"{arch}.attention.key_length", embd // heads))
    value_len = int(facts.get(f"{arch}.attention.value_length", embd // heads))
    return layers * heads_kv * (key_len + value_len) * 2  # f16 K and V


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(self, spec: LoadSpec, *, threads: int = 0, default_ctx_len: int = 4096) -> None:
        super().__init__(spec)
        params = spec.parameters
        self.ctx_len = int(params.get("ctx_len") or default_ctx_len)
        self.ngl = int(params.get("ngl") or 0)
        self.n_parallel = max(1, int(params.get("n_parallel") or 1))
        self.threads = int(params.get("cpu_threads") or threads or os.cpu_count() or 1)
        self.embedding_only = _truthy(params.get("embedding", False)) and _truthy(
            params.get("embedding_only", False)
        )
        self._instances: list[Any] = []
        self._pools: list[ThreadPoolExecutor] = []
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._embedder: Any = None
        self._embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{spec.model_id}")
        self._embed_lock = asyncio.Lock()
        self._format: Callable[[list[dict[str, str]]], tuple[str, list[str], bool]] | None = None
        self.chat_format = ""
        self._memory: int | None = None

    # --- memory -------------------------------------------------------------------------------------------

    @classmethod
    def estimate_memory(cls, spec: LoadSpec) -> int:
        weights = sum(p.stat().st_size for p in spec.files) + (
            spec.mmproj.stat().st_size if spec.mmproj else 0
        )
        params = spec.parameters
        ctx = int(params.get("ctx_len") or 4096)
        n = max(1, int(params.get("n_parallel") or 1))
        try:
            per_token = _kv_bytes_per_token(_gguf_facts(spec.files[0]))
        except Exception:
            per_token = 256 * 1024  # a 7B-class model, when the header cannot be read
        return n * (weights + ctx * per_token + COMPUTE_OVERHEAD)

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
        # The embedding instance, once made, holds one more copy.
        return self._memory + (self._memory // self.n_parallel if self._embedder is not None else 0)

    @property
    def slots(self) -> int:
        return self.n_parallel

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

    def _new_llama(self, embedding: bool) -> Any:
        from llama_cpp import Llama

        kwargs: dict[str, Any] = {
            "model_path": str(self.spec.files[0]),
            "n_ctx": self.ctx_len,
            "n_gpu_layers": self.ngl,
            "n_threads": self.threads,
            "n_threads_batch": self.threads,
            "n_batch": min(512, self.ctx_len),
            "embedding": embedding,
            "verbose": False,
        }
        if embedding:
            kwargs["pooling_type"] = 1  # mean pooling: one vector per input
        try:
            return Llama(**kwargs)
        except ValueError as exc:
            raise FailedPrecondition(f"llama.cpp could not load {self.spec.files[0].name}: {exc}") from None

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.n_parallel):
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{self.spec.model_id}-{i}")
            self._pools.append(pool)
            self._instances.append(await loop.run_in_executor(pool, self._new_llama, False))
            self._free.put_nowait(i)
        self._format = self._choose_format(self._instances[0])
        await asyncio.to_thread(lambda: self.memory_bytes)

    async def unload(self) -> None:
        loop = asyncio.get_running_loop()
        for llm, pool in zip(self._instances, self._pools, strict=True):
            await loop.run_in_executor(pool, llm.close)
            pool.shutdown(wait=True)
        if self._embedder is not None:
            await loop.run_in_executor(self._embed_pool, self._embedder.close)
        self._embed_pool.shutdown(wait=True)
        self._instances.clear()
        self._pools.clear()
        self._embedder = None
        _malloc_trim()

    # --- prompts ------------------------------------------------------------------------------------------

    def _choose_format(self, llm: Any) -> Callable[[list[dict[str, str]]], tuple[str, list[str], bool]]:
        from llama_cpp import llama_chat_format as fmt

        params = self.spec.parameters
        if any(params.get(k) for k in ("pre_prompt", "user_prompt", "ai_prompt")):
            self.chat_format = "model object prompt fields"
            return self._spec_prompt
        template = llm.metadata.get("tokenizer.chat_template")
        named = params.get("chat_format")
        if named:
            if named not in CHAT_FORMATS:
                raise InvalidArgument(
                    f"chat_format must be one of {', '.join(CHAT_FORMATS)}", param="chat_format"
                )
            return self._named(named)
        if template:
            eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="ignore")
            bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore")
            formatter = fmt.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
            self.chat_format = "gguf chat template"

            def render(messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
                result = formatter(messages=messages)  # type: ignore[arg-type]
                return result.prompt, _stops(result.stop), True

            return render
        arch = str(llm.metadata.get("general.architecture", ""))
        return self._named("gemma" if arch.startswith("gemma") else "chatml")

    def _named(self, name: str) -> Callable[[list[dict[str, str]]], tuple[str, list[str], bool]]:
        from llama_cpp import llama_chat_format as fmt

        function = getattr(
            fmt, "format_" + name.replace("-", "_").replace("llama_2", "llama2").replace("llama_3", "llama3")
        )
        self.chat_format = name

        def render(messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
            result = function(messages=messages)
            return result.prompt, _stops(result.stop), False

        return render

    def _spec_prompt(self, messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
        """The Jan spec's prompt fields: pre_prompt, then user_prompt/ai_prompt before each turn."""
        params = self.spec.parameters
        pre, user, ai = (str(params.get(k) or "") for k in ("pre_prompt", "user_prompt", "ai_prompt"))
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        parts = [pre + (("\n" if pre else "") + system if system else "")]
        for m in messages:
            if m["role"] == "user":
                parts.append(f"{user}{m['content']}")
            elif m["role"] == "assistant":
                parts.append(f"{ai}{m['content']}")
        prompt = "\n".join(p for p in parts if p) + ("\n" if parts[-1] else "") + ai
        stops = [s for s in (user.strip(),) if s]
        return prompt, stops, False

    # --- generation ---------------------------------------------------------------------------------------

    def _prompt_tokens(self, llm: Any, request: GenerateRequest) -> tuple[list[int], list[str]]:
        if request.messages is not None:
            assert self._format is not None
            prompt, stops, has_special = self._format(request.messages)
            tokens = llm.tokenize(prompt.encode(), add_bos=not has_special, special=True)
        else:
            stops = []
            tokens = llm.tokenize((request.prompt or "").encode(), add_bos=True, special=False)
        return tokens, stops

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        slot = await self._free.get()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Delta | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(
            self._pools[slot], self._run, self._instances[slot], request, put, cancel
        )
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()  # a client that went away stops the generation at the next token
            with contextlib.suppress(Exception):
                await asyncio.shield(future)
            self._free.put_nowait(slot)

    def _run(
        self,
        llm: Any,
        request: GenerateRequest,
        put: Callable[[Delta | BaseException | None], None],
        cancel: threading.Event,
    ) -> None:
        import llama_cpp

        try:
            tokens, stops = self._prompt_tokens(llm, request)
            s = request.sampling
            stops = [*stops, *s.stop]
            room = self.ctx_len - len(tokens)
            if room <= 0:
                raise InvalidArgument(
                    f"the prompt has {len(tokens)} tokens and the context holds {self.ctx_len}",
                    code="context_length_exceeded",
                    param="messages",
                )
            max_tokens = min(s.max_tokens, room) if s.max_tokens > 0 else room
            llm.set_seed(s.seed if s.seed is not None else random.randint(0, 2**31 - 1))
            completion: list[int] = []
            emitted = 0
            text = ""
            finish = "length"
            for token in llm.generate(
                tokens,
                top_k=s.top_k,
                top_p=s.top_p,
                min_p=s.min_p,
                temp=s.temperature,
                repeat_penalty=s.repeat_penalty,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
            ):
                if cancel.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    finish = "stop"
                    break
                completion.append(token)
                text = _valid_utf8(llm.detokenize(completion, prev_tokens=tokens))
                cut = _find_stop(text, stops)
                if cut is not None:
                    text = text[:cut]
                    finish = "stop"
                    break
                hold = _partial_stop(text, stops)
                if len(text) - hold > emitted:
                    put(Delta(text=text[emitted : len(text) - hold]))
                    emitted = len(text) - hold
                if len(completion) >= max_tokens:
                    break
            put(
                Delta(
                    text=text[emitted:],
                    finish_reason=finish,
                    prompt_tokens=len(tokens),
                    completion_tokens=len(completion),
                )
            )
            put(None)
        except BaseException as exc:  # handed to the event loop, raised there
            put(exc)

    # --- embeddings ---------------------------------------------------------------------------------------

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        loop = asyncio.get_running_loop()
        async with self._embed_lock:
            if self._embedder is None:
                self._embedder = await loop.run_in_executor(self._embed_pool, self._new_llama, True)

        def run() -> tuple[list[list[float]], int]:
            count = sum(len(self._embedder.tokenize(t.encode(), add_bos=True)) for t in inputs)
            if any(len(self._embedder.tokenize(t.encode(), add_bos=True)) > self.ctx_len for t in inputs):
                raise InvalidArgument(
                    f"an input is longer than the context ({self.ctx_len} tokens)", param="input"
                )
            vectors = self._embedder.embed(inputs)
            return [list(map(float, v)) for v in vectors], count

        return await loop.run_in_executor(self._embed_pool, run)


def _stops(stop: Any) -> list[str]:
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


def _valid_utf8(data: bytes) -> str:
    """Decodes what is complete; a multi-byte character cut at the end waits for its next token."""
    for cut in range(0, 4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _find_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string (held back)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def _malloc_trim() -> None:
    # llama.cpp frees with free(); glibc keeps the pages until asked to give them back.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

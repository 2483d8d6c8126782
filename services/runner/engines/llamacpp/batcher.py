"""The batched scheduler of the llama.cpp engine: one model, one context whose sequences are the slots.

It runs on the process's one compute thread (see compute.py); only the `submit*` methods are called from
the event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import dataclasses
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.runner.engines.base import Delta, GenerateRequest, TokenLogprob
from services.runner.engines.compute import ComputeThread
from services.runner.engines.llamacpp.sampling import (
    Picker,
    SlotSampler,
    grammar_sampler,
    is_greedy,
    sampler_chain,
    token_logprob,
)
from services.runner.engines.llamacpp.vision import (
    MediaPrompt,
    Projector,
    is_image_start,
    snap_to_image_start,
)
from services.runner.engines.prompt import find_stop, partial_stop, reported_stop

log = logging.getLogger(__name__)

COMPUTE_OVERHEAD = 96 * 1024 * 1024  # scratch buffers of a context, measured roughly on CPU builds
# The longest embedding input. Pooling needs a whole input in one batch, and llama.cpp computes the logits
# of every token of it (vocabulary x tokens floats: 0.5 GiB for Gemma's 262k vocabulary at 512).
EMBEDDING_MAX_TOKENS = 512
# A cached prefix this long is reused even when it spreads the active sequences apart (see _choose_slot).
REUSE_ALWAYS_TOKENS = 256
# At load, the chat prefix (template opening, system prompt) is decoded into every slot when all of them
# together take at most this many tokens.
PREFILL_MAX_TOKENS = 4096


@dataclass(eq=False)
class Job:
    request: GenerateRequest
    text: bytes
    add_bos: bool
    special: bool
    stops: list[str]
    # The GBNF the output must follow ("" = free), and the request field that asked for it (errors).
    grammar: str = ""
    grammar_param: str = "response_format"
    # Special tokens are written out as text (tool-call markers that are special tokens in some vocabularies).
    render_special: bool = False
    # The images of a chat, each at an IMAGE_MARKER in `text`; read by the model's projector.
    images: list[bytes] = field(default_factory=list)
    # The prompt as tokens and image chunks, once admitted (a prompt with images only).
    media: MediaPrompt | None = None
    queue: asyncio.Queue[Delta | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False


@dataclass(eq=False)
class EmbedJob:
    inputs: list[bytes]
    future: asyncio.Future[tuple[list[list[float]], int]]
    vectors: list[list[float]] = field(default_factory=list)
    tokens: int = 0
    cancelled: bool = False


@dataclass(frozen=True)
class SlotView:
    """What a slot holds, read-only (tests and diagnostics): its sequence, whether a request is on it, and
    the tokens in its KV cache."""

    seq: int
    busy: bool
    cache: tuple[int, ...]


@dataclass(eq=False)
class _Slot:
    seq: int
    cache: list[int] = field(default_factory=list)  # the tokens in this sequence's KV cache
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    next_token: int | None = None  # sampled, decoded at the next step
    sampler: SlotSampler | None = None
    index: int = 0  # the choice of the job this slot generates (n > 1: one slot per choice)
    # A choice other than the first waits for the first slot's prompt, then copies its cache.
    follows: _Slot | None = None
    cached_tokens: int = 0  # prompt tokens found in the cache at admission
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens whose text is not sent yet
    prompt_tokens: int = 0
    generated: int = 0
    max_tokens: int = 0
    text: str = ""  # decoded text not sent yet (held back while it could start a stop string)
    decoder: Any = None
    logits_at: int = -1  # the batch index whose logits this slot samples from after a decode
    last_used: int = 0  # when it last took a request (a counter; 0: never)


class Batcher:
    """One model, one llama.cpp context whose sequences are the slots; continuous batching.

    Every step decodes one batch: the next token of every generating slot plus a chunk of the prompts
    being read (so a new prompt never stalls the others for long), then samples each slot that has
    logits with the slot's own sampler chain. A request waits in a FIFO until a slot is free; a chat's
    next turn goes back to the slot that holds its previous one, a new chat takes the slot used longest
    ago (see _choose_slot). Embeddings use a second context on the same weights, one
    input per step. All methods but the `submit*` ones run on the compute thread.
    """

    def __init__(
        self,
        *,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        ctx_len: int,
        n_parallel: int,
        threads: int,
        ngl: int,
        mmproj: Path | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's own log: errors only
        self._ll = llama_cpp
        self.loop = loop
        self.threads = threads
        self.waiting: deque[Job] = deque()
        self.embeds: deque[EmbedJob] = deque()
        self.embedding_bytes = 0
        self._embed_ctx: Any = None
        self._embed_batch: Any = None
        self._embed_n_ctx = 0
        self._ctx: Any = None
        self._batch: Any = None
        self._pieces: dict[int, bytes] = {}
        self._projector: Projector | None = None
        # Counters (tests and metrics read them): prompt tokens decoded, of them reused from a slot's
        # cache, tokens generated, decode steps, the most sequences decoded in one step, images read.
        self.stats = {
            "prompt_tokens": 0,
            "reused_tokens": 0,
            "generated": 0,
            "steps": 0,
            "max_batch": 0,
            "images": 0,
        }
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = ngl
        try:
            self.model = LlamaModel(path_model=str(path), params=params, verbose=False)
        except ValueError as exc:
            raise FailedPrecondition(f"llama.cpp could not load {path.name}: {exc}") from None
        self.vocab = self.model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model.model)
        self.bos, self.eos = self.model.token_bos(), self.model.token_eos()
        self.metadata = self.model.metadata()
        self.ctx_len = ctx_len
        self.slots = [_Slot(seq=i) for i in range(n_parallel)]
        self._admitted = 0  # requests given a slot so far (the slots' last_used clock)
        if n_parallel:
            n_parallel = min(n_parallel, int(llama_cpp.llama_max_parallel_sequences()))
            self.n_batch = 512
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = ctx_len * n_parallel
            cp.n_batch = self.n_batch
            cp.n_ubatch = self.n_batch
            cp.n_seq_max = n_parallel
            cp.kv_unified = False  # each slot has its own ctx_len
            cp.n_threads = cp.n_threads_batch = threads
            # As llama-server: flash attention where the backend has it (+4% tokens/s on CPU, measured), and
            # sliding-window layers cache only their window (Gemma 3: 5 of 6 layers; the KV cache shrinks
            # to about a third). A reused prefix must then still hold the window (see _reusable).
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            cp.swa_full = False
            self._ctx = llama_cpp.llama_init_from_model(self.model.model, cp)
            if not self._ctx:
                self.model.close()
                raise FailedPrecondition(
                    f"llama.cpp could not make a context of {ctx_len} tokens x {n_parallel} for {path.name}"
                )
            # llama.cpp may round the context up; the model's ctx_len stays the limit.
            self.ctx_len = min(ctx_len, int(llama_cpp.llama_n_ctx_seq(self._ctx)))
            self._mem = llama_cpp.llama_get_memory(self._ctx)
            self._n_swa = int(llama_cpp.llama_model_n_swa(self.model.model))
            self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            self._picker = Picker(llama_cpp, self._ctx, self.n_vocab)
            if mmproj is not None:
                try:
                    self._projector = Projector(mmproj, self.model.model, threads=threads, use_gpu=ngl > 0)
                except BaseException:
                    self.close()
                    raise

    def slot_views(self) -> list[SlotView]:
        return [SlotView(s.seq, s.job is not None, tuple(s.cache)) for s in self.slots]

    # --- from the event loop ------------------------------------------------------------------------------

    def submit(self, job: Job, compute: ComputeThread) -> None:
        with compute.lock:
            self.waiting.append(job)
            compute.lock.notify()

    def submit_embedding(self, job: EmbedJob, compute: ComputeThread) -> None:
        with compute.lock:
            self.embeds.append(job)
            compute.lock.notify()

    # --- tokens -------------------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        n = len(text) + 16
        buf = (self._ll.llama_token * n)()
        count = self._ll.llama_tokenize(self.vocab, text, len(text), buf, n, add_bos, special)
        if count < 0:
            n = -count
            buf = (self._ll.llama_token * n)()
            count = self._ll.llama_tokenize(self.vocab, text, len(text), buf, n, add_bos, special)
        return list(buf[:count])

    def piece(self, token: int, special: bool = False) -> bytes:
        key = -token - 1 if special else token
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def token_text(self, token: int) -> str:
        return self.model.detokenize([token], special=True).decode(errors="ignore")

    # --- the compute thread's side ------------------------------------------------------------------------

    def has_work(self) -> bool:
        return (
            bool(self.embeds)
            or any(s.job is not None for s in self.slots)
            or (bool(self.waiting) and sum(s.job is None for s in self.slots) >= self.waiting[0].request.n)
        )

    def prefill(self, prefix: list[int]) -> None:
        """Decodes `prefix` (what every chat prompt starts with) into every empty slot, as few slots per
        batch as fit: a new chat then reads only its own part, whichever slot it takes."""
        per_batch = self.n_batch // len(prefix) if len(prefix) < self.ctx_len else 0
        if not per_batch or len(prefix) * len(self.slots) > PREFILL_MAX_TOKENS:
            return
        empty = [slot for slot in self.slots if not slot.cache and slot.job is None]
        for first in range(0, len(empty), per_batch):
            group = empty[first : first + per_batch]
            n = 0
            for slot in group:
                for pos, token in enumerate(prefix):
                    self._put(self._batch, n, token, pos, slot.seq, False)
                    n += 1
            self._batch.n_tokens = n
            if self._ll.llama_decode(self._ctx, self._batch) != 0:
                for slot in group:
                    self._ll.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                return  # not worth failing a load for
            for slot in group:
                slot.cache = list(prefix)

    def step(self) -> None:
        out: list[tuple[Job | EmbedJob, Any]] = []
        try:
            if self.embeds:
                self._embed_one(out)
            self._generate_step(out)
        except Exception as exc:  # a failed decode fails the requests in the batch, not the runner
            log.exception("llama.cpp step failed")
            for slot in self.slots:
                if slot.job is not None:
                    out.append((slot.job, exc))
                    self._release(slot, clear=True)
        finally:
            if out:
                self.loop.call_soon_threadsafe(_deliver, out)

    def _generate_step(self, out: list[tuple[Job | EmbedJob, Any]]) -> None:
        ll = self._ll
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot)
        while self.waiting:
            free = [s for s in self.slots if s.job is None]
            job = self.waiting[0]
            if len(free) < job.request.n and not job.cancelled:
                break  # FIFO: a job of n choices waits for n free slots, and the ones behind it wait too
            self.waiting.popleft()
            if job.cancelled:
                continue
            try:
                self._admit(job, free)
            except Exception as exc:
                self._release_job(job)
                out.append((job, exc))
        self._read_images(out)
        batch = self._batch
        n = 0
        decoding = [s for s in self.slots if s.job is not None and s.next_token is not None]
        for slot in decoding:
            self._put(batch, n, slot.next_token, len(slot.cache), slot.seq, True)  # type: ignore[arg-type]
            slot.logits_at = n
            n += 1
        # Prompt chunks fill the rest, smaller while others are generating so they keep their pace.
        room = self.n_batch - n if not decoding else min(self.n_batch - n, max(32, self.n_batch // 4))
        filled: list[tuple[_Slot, int]] = []
        for slot in self.slots:
            if room <= 0:
                break
            if slot.job is None or not slot.pending or slot.follows is not None:
                continue
            take = min(room, len(slot.pending))
            start = len(slot.cache)
            if slot.job.media is not None:  # text up to the next image only
                take = slot.job.media.next_image(start, start + take) - start
                if take == 0:
                    continue
            for i in range(take):
                last = i == take - 1 and take == len(slot.pending)
                self._put(batch, n, slot.pending[i], start + i, slot.seq, last)
                if last:
                    slot.logits_at = n
                n += 1
            filled.append((slot, take))
            room -= take
        if n == 0:
            return
        batch.n_tokens = n
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        stats = self.stats
        stats["steps"] += 1
        stats["prompt_tokens"] += n - len(decoding)
        stats["max_batch"] = max(stats["max_batch"], len(decoding) + len(filled))
        for slot in decoding:
            slot.cache.append(slot.next_token)  # type: ignore[arg-type]
            slot.next_token = None
        sample = list(decoding)
        for slot, take in filled:
            slot.cache.extend(slot.pending[:take])
            del slot.pending[:take]
            if not slot.pending:
                sample.append(slot)
                sample.extend(self._copy_to_followers(slot))
        for slot in sample:
            assert slot.sampler is not None
            token, logprob, logsoftmax = self._picker.pick(slot.sampler, slot.logits_at)
            if logsoftmax is not None:
                assert logprob is not None
                slot.logprobs.append(
                    token_logprob(token, logprob, logsoftmax, slot.sampler.top_logprobs, self.piece)
                )
            self._advance(slot, token, out)

    def _read_images(self, out: list[tuple[Job | EmbedJob, Any]]) -> None:
        """Every slot whose prompt goes on with an image reads it now, in a decode of its own (the others
        wait for one image; llama-server does the same). A failed image fails its request only."""
        for slot in self.slots:
            job = slot.job
            if job is None or job.media is None or slot.follows is not None or not slot.pending:
                continue
            while slot.pending and is_image_start(slot.pending[0]):
                assert self._projector is not None
                start = len(slot.cache)
                chunk, n_pos = job.media.images[start]
                try:
                    self._projector.evaluate(self._ctx, chunk, start, slot.seq, self.n_batch)
                except Exception as exc:
                    out.append((job, exc))
                    for other in self.slots:
                        if other.job is job:
                            self._release(other, clear=True)
                    break
                slot.cache.extend(slot.pending[:n_pos])
                del slot.pending[:n_pos]
                self.stats["prompt_tokens"] += n_pos
                self.stats["images"] += 1

    @staticmethod
    def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _admit(self, job: Job, free: list[_Slot]) -> None:
        if job.images:
            if self._projector is None:
                raise InvalidArgument("this model has no projector to read images with", param="messages")
            job.media = self._projector.tokenize(job.text, job.images, job.add_bos, job.special)
            tokens = job.media.tokens
        else:
            tokens = self.tokenize(job.text, job.add_bos, job.special)
        if not tokens:
            tokens = [self.bos]
        if len(tokens) >= self.ctx_len:
            raise InvalidArgument(
                f"the prompt has {len(tokens)} tokens and the context holds {self.ctx_len}",
                code="context_length_exceeded",
                param="messages",
            )
        first = self._choose_slot(tokens, free)
        others = sorted(
            (s for s in free if s is not first), key=lambda s: (abs(s.seq - first.seq), s.last_used)
        )
        slots = [first, *others[: job.request.n - 1]]
        self._admitted += 1
        job.stops = [*job.stops, *job.request.sampling.stop]
        for index, slot in enumerate(slots):
            slot.last_used = self._admitted
            slot.job = job  # before anything can fail: a failure releases every slot of the job
            slot.index = index
            slot.follows = first if index else None
            self._start(slot, job, tokens)
        keep = common_prefix(first.cache, tokens)
        keep = min(keep, len(tokens) - 1)  # the last prompt token is always decoded: its logits
        keep = snap_to_image_start(tokens, keep)  # an image is computed whole
        if keep < len(first.cache) and not self._reusable(first, keep):
            keep = 0
        if keep < len(first.cache) and not self._ll.llama_memory_seq_rm(self._mem, first.seq, keep, -1):
            self._ll.llama_memory_seq_rm(self._mem, first.seq, -1, -1)
            keep = 0
        self.stats["reused_tokens"] += keep
        first.cache = first.cache[:keep]
        first.pending = tokens[keep:]
        for slot in slots:
            slot.cached_tokens = keep

    def _reusable(self, slot: _Slot, keep: int) -> bool:
        """Whether the first `keep` tokens of a slot's cache can be kept while the rest is dropped. Layers
        with a sliding window hold only the last window of positions; a prefix cut shorter than the cache
        needs the window before the cut, which may be gone already (llama-server's test too)."""
        if self._n_swa <= 0:
            return True
        pos_min = int(self._ll.llama_memory_seq_pos_min(self._mem, slot.seq))
        return pos_min <= max(0, keep - self._n_swa)

    def _start(self, slot: _Slot, job: Job, tokens: list[int]) -> None:
        """Makes `slot` generate choice `slot.index` of `job` (its prompt is set by the caller)."""
        request = job.request
        s = request.sampling
        room = self.ctx_len - len(tokens)
        slot.pending = list(tokens)  # a follower keeps it only to know its length; the first slot's is set
        slot.next_token = None
        slot.prompt_tokens = len(tokens)
        slot.generated = 0
        slot.max_tokens = min(s.max_tokens, room) if s.max_tokens > 0 else room
        slot.text = ""
        slot.logprobs = []
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        greedy = is_greedy(s)
        # Each choice has its own seed stream (seed, seed+1, ...): n choices of a seeded request differ.
        sampling = s if s.seed is None or not slot.index else dataclasses.replace(s, seed=s.seed + slot.index)
        slot.sampler = SlotSampler(
            chain=None if greedy else sampler_chain(self._ll, self.n_vocab, sampling),
            greedy=greedy,
            bias=request.logit_bias,
            top_logprobs=request.top_logprobs if request.logprobs or request.top_logprobs else -1,
        )
        if job.grammar:
            slot.sampler.grammar = grammar_sampler(self._ll, self.vocab, job.grammar, job.grammar_param)

    def _copy_to_followers(self, first: _Slot) -> list[_Slot]:
        """The first slot of a job has read the prompt: its other choices copy its cache (the prompt is
        computed once) and sample from the same logits."""
        followers = [s for s in self.slots if s.follows is first and s.job is first.job]
        for slot in followers:
            self._ll.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            self._ll.llama_memory_seq_cp(self._mem, first.seq, slot.seq, -1, -1)
            slot.cache = list(first.cache)
            slot.pending = []
            slot.follows = None
            slot.logits_at = first.logits_at
        return followers

    def _choose_slot(self, tokens: list[int], free: list[_Slot]) -> _Slot:
        """The free slot for a prompt.

        A prompt that continues a slot's cache (a chat's next turn: at least half of its tokens, or
        REUSE_ALWAYS_TOKENS of them, are cached there) goes back to that slot. Any other prompt is new
        and takes the slot used longest ago (never-used ones first), so that it does not overwrite a
        conversation that may come back: with 4 chats in turn on 4 slots, every turn re-reads only its
        new message, where filling the slot with the longest common prefix (a chat template's first
        few tokens) would make every turn re-read its whole history.

        While others generate, the slot that keeps the active sequences closest together comes first
        (a cached prefix of REUSE_ALWAYS_TOKENS excepted): llama.cpp decodes the sequences of a batch as
        one range of its per-sequence caches, idle ones in between included (measured: 2 streams on
        sequences 0 and 7 ran at 44 tokens/s, on 0 and 1 at 69)."""
        common = {s.seq: common_prefix(s.cache, tokens) for s in free}
        reuse = max(free, key=lambda s: (common[s.seq], -s.last_used, -s.seq))
        cached = common[reuse.seq]
        returning = cached >= REUSE_ALWAYS_TOKENS or cached * 2 >= len(tokens)
        active = [s.seq for s in self.slots if s.job is not None]
        if returning and (not active or cached >= REUSE_ALWAYS_TOKENS):
            return reuse

        def span(slot: _Slot) -> int:
            return max(*active, slot.seq) - min(*active, slot.seq) if active else 0

        if returning:
            return min(free, key=lambda s: (span(s), -common[s.seq], s.seq))
        return min(free, key=lambda s: (span(s), s.last_used, s.seq))

    def _advance(self, slot: _Slot, token: int, out: list[tuple[Job | EmbedJob, Any]]) -> None:
        job = slot.job
        assert job is not None
        if self._ll.llama_vocab_is_eog(self.vocab, token):
            if slot.logprobs:
                slot.logprobs.pop()  # the end-of-generation token is no part of the answer
            self._finish(slot, "stop", out, flush=True)
            return
        slot.generated += 1
        self.stats["generated"] += 1
        slot.text += slot.decoder.decode(self.piece(token, job.render_special))
        found = find_stop(slot.text, job.stops)
        if found is not None:
            cut, matched = found
            slot.text = slot.text[:cut]
            stop = reported_stop(matched, job.request.sampling.stop)
            self._finish(slot, "stop", out, flush=False, stop_sequence=stop)
            return
        if slot.generated >= slot.max_tokens or len(slot.cache) + 1 >= self.ctx_len:
            self._finish(slot, "length", out, flush=True)
            return
        hold = partial_stop(slot.text, job.stops)
        if len(slot.text) > hold:
            out.append(
                (
                    job,
                    Delta(
                        text=slot.text[: len(slot.text) - hold],
                        index=slot.index,
                        logprobs=tuple(slot.logprobs),
                    ),
                )
            )
            slot.text = slot.text[len(slot.text) - hold :]
            slot.logprobs = []
        slot.next_token = token

    def _finish(
        self,
        slot: _Slot,
        reason: str,
        out: list[tuple[Job | EmbedJob, Any]],
        *,
        flush: bool,
        stop_sequence: str = "",
    ) -> None:
        assert slot.job is not None
        text = slot.text + (slot.decoder.decode(b"", final=True) if flush else "")
        out.append(
            (
                slot.job,
                Delta(
                    text=text,
                    finish_reason=reason,
                    prompt_tokens=slot.prompt_tokens,
                    completion_tokens=slot.generated,
                    index=slot.index,
                    logprobs=tuple(slot.logprobs),
                    cached_tokens=slot.cached_tokens,
                    stop_sequence=stop_sequence,
                ),
            )
        )
        self._release(slot)

    def _release(self, slot: _Slot, *, clear: bool = False) -> None:
        """The slot takes the next request; its cache stays for a later prompt with the same start."""
        if slot.sampler is not None:
            slot.sampler.free(self._ll)
        slot.sampler = None
        slot.job = None
        slot.follows = None
        slot.pending = []
        slot.next_token = None
        slot.text = ""
        slot.logprobs = []
        if clear:
            self._ll.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.cache = []

    def _release_job(self, job: Job) -> None:
        for slot in self.slots:
            if slot.job is job:
                self._release(slot)

    # --- embeddings ---------------------------------------------------------------------------------------

    def _embed_one(self, out: list[tuple[Job | EmbedJob, Any]]) -> None:
        """One input of the oldest embedding request: a bounded pause for the generating slots."""
        ll = self._ll
        job = self.embeds[0]
        try:
            if job.cancelled:
                self.embeds.popleft()
                return
            if self._embed_ctx is None:
                self._open_embedding_context()
            text = job.inputs[len(job.vectors)]
            tokens = self.tokenize(text, True, False) or [self.bos]
            if len(tokens) > self._embed_n_ctx:
                raise InvalidArgument(
                    f"input {len(job.vectors)} has {len(tokens)} tokens; embeddings take at most "
                    f"{self._embed_n_ctx}",
                    code="context_length_exceeded",
                    param="input",
                )
            batch = self._embed_batch
            for i, token in enumerate(tokens):
                self._put(batch, i, token, i, 0, True)
            batch.n_tokens = len(tokens)
            ll.llama_memory_clear(ll.llama_get_memory(self._embed_ctx), True)
            rc = ll.llama_decode(self._embed_ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}) for an embedding")
            pointer = ll.llama_get_embeddings_seq(self._embed_ctx, 0)
            vector = [float(x) for x in pointer[: self.n_embd]]
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            job.vectors.append([x / norm for x in vector])
            job.tokens += len(tokens)
            if len(job.vectors) == len(job.inputs):
                self.embeds.popleft()
                out.append((job, (job.vectors, job.tokens)))
        except Exception as exc:
            self.embeds.popleft()
            out.append((job, exc))

    def _open_embedding_context(self) -> None:
        ll = self._ll
        n_ctx = min(self.ctx_len, EMBEDDING_MAX_TOKENS)
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_ctx  # a whole input in one batch: mean pooling needs it
        cp.n_seq_max = 1
        cp.embeddings = True
        cp.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = ll.llama_init_from_model(self.model.model, cp)
        if not ctx:
            raise FailedPrecondition("llama.cpp could not make an embedding context")
        self._embed_ctx, self._embed_n_ctx = ctx, n_ctx
        self._embed_batch = ll.llama_batch_init(n_ctx, 0, 1)
        self.embedding_bytes = int(ll.llama_state_get_size(ctx)) + COMPUTE_OVERHEAD

    # --- teardown -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Fails whatever still waits or runs, then frees contexts and weights (on the compute thread)."""
        ll = self._ll
        gone = Unavailable("the model was unloaded", code="model_unloaded")
        out: list[tuple[Job | EmbedJob, Any]] = []
        for slot in self.slots:
            if slot.job is not None:
                out.append((slot.job, gone))
            self._release(slot)
        out.extend((job, gone) for job in self.waiting)
        out.extend((job, gone) for job in self.embeds)
        self.waiting.clear()
        self.embeds.clear()
        if out:
            self.loop.call_soon_threadsafe(_deliver, out)
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._embed_batch is not None:
            ll.llama_batch_free(self._embed_batch)
            self._embed_batch = None
        if self._projector is not None:
            self._projector.close()
            self._projector = None
        for ctx in (self._ctx, self._embed_ctx):
            if ctx:
                ll.llama_free(ctx)
        self._ctx = self._embed_ctx = None
        self.model.close()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _deliver(out: list[tuple[Job | EmbedJob, Any]]) -> None:
    """On the event loop: hands each request what the step produced for it."""
    for job, item in out:
        if isinstance(job, Job):
            job.queue.put_nowait(item)
        elif not job.future.done():
            if isinstance(item, BaseException):
                job.future.set_exception(item)
            else:
                job.future.set_result(item)


def malloc_trim() -> None:
    # llama.cpp frees with free(); glibc keeps the pages until asked to give them back.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

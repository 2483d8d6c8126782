"""Choosing a slot's next token from its logits: the sampler chain llama-cpp-python's `Llama` builds,
logit biases, a grammar that constrains the output, and log-probabilities. Runs on the compute thread.

A grammar is applied the way llama-server applies it: the token is first chosen without the grammar
and then checked against it alone (one candidate, cheap); only when the grammar refuses it are all the
candidates masked (every vocabulary entry matched against the grammar: ~33 ms with Gemma's 262k
tokens) and the token chosen again from what the grammar allows. Greedy decoding first tries the next
likeliest tokens one by one, which almost always gives the same token without the mask.

Log-probabilities are those of the logits the sampler starts from: the model's, plus the logit biases,
minus what the grammar forbids (-inf), before temperature, top-k/p and penalties (as vLLM returns them by
default).
"""

from __future__ import annotations

import ctypes
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument
from services.runner.engines.base import Sampling, TokenLogprob, TopLogprob

# Greedy decoding under a grammar checks this many of the likeliest tokens one by one before it masks all.
GREEDY_CHECKS = 128
# llama_token_data: (id int32, logit float, p float), 12 bytes, packed as llama.h has it.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def sampler_chain(ll: Any, n_vocab: int, s: Sampling) -> Any:
    """The chain llama-cpp-python's `Llama` builds, so that answers match it token for token."""
    seed = s.seed if s.seed is not None else random.randint(0, 2**31 - 1)
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        ll.llama_sampler_chain_add(chain, sampler)

    add(
        ll.llama_sampler_init_penalties(
            n_vocab, 64, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
        )
    )
    if s.temperature < 0:
        add(ll.llama_sampler_init_dist(seed))
    elif s.temperature == 0:
        add(ll.llama_sampler_init_greedy())
    else:
        add(ll.llama_sampler_init_top_k(s.top_k))
        add(ll.llama_sampler_init_typical(1.0, 1))
        add(ll.llama_sampler_init_top_p(s.top_p, 1))
        add(ll.llama_sampler_init_min_p(s.min_p, 1))
        add(ll.llama_sampler_init_temp(s.temperature))
        add(ll.llama_sampler_init_dist(seed))
    return chain


def is_greedy(s: Sampling) -> bool:
    """Temperature 0 and no penalties: the most likely token, no sampler chain needed."""
    return (
        s.temperature == 0
        and s.repeat_penalty == 1.0
        and s.frequency_penalty == 0.0
        and s.presence_penalty == 0.0
    )


def grammar_sampler(ll: Any, vocab: Any, gbnf: str, param: str) -> Any:
    sampler = ll.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise InvalidArgument(
            "llama.cpp could not parse the grammar (GBNF with a `root` rule)",
            code="invalid_grammar",
            param=param,
        )
    return sampler


@dataclass(eq=False)
class SlotSampler:
    """One slot's way of choosing tokens: greedy or a chain, optional biases, grammar and logprobs."""

    chain: Any
    greedy: bool
    bias: dict[int, float]
    grammar: Any = None
    top_logprobs: int = -1  # -1: no log-probabilities

    def free(self, ll: Any) -> None:
        for sampler in (self.chain, self.grammar):
            if sampler:
                ll.llama_sampler_free(sampler)
        self.chain = self.grammar = None


class Picker:
    """Chooses tokens from a context's logits (one per batcher; buffers reused across slots and steps)."""

    def __init__(self, ll: Any, ctx: Any, n_vocab: int) -> None:
        self._ll = ll
        self._ctx = ctx
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._cands = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._one = np.zeros(1, dtype=TOKEN_DATA)
        self._array = ll.llama_token_data_array()
        self._array_p = ctypes.pointer(self._array)

    def logits(self, index: int) -> np.ndarray:
        """The context's logits at batch index `index`: a view, so biases written there are seen by the
        sampler chain too."""
        pointer = self._ll.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def pick(self, s: SlotSampler, index: int) -> tuple[int, float | None, np.ndarray | None]:
        """The next token; with log-probabilities asked, also its log-probability and the log-softmax."""
        logits = self.logits(index)
        for token, bias in s.bias.items():
            if 0 <= token < self.n_vocab:
                logits[token] += bias
        if not s.grammar and not s.greedy and s.top_logprobs < 0:
            # The common case stays in C: the chain reads the (biased) logits, samples and accepts.
            return int(self._ll.llama_sampler_sample(s.chain, self._ctx, index)), None, None
        if s.grammar and s.top_logprobs >= 0:
            self._mask(s.grammar, logits)  # log-probabilities over what the grammar allows
        token = self._choose(s, logits, index)
        if s.grammar and not self._allowed(s.grammar, token, float(logits[token])):
            allowed = self._likeliest_allowed(s.grammar, logits) if s.greedy else None
            if allowed is None:
                self._mask(s.grammar, logits)
                allowed = self._choose(s, logits, index)
            token = allowed
        if s.grammar:
            self._ll.llama_sampler_accept(s.grammar, token)
        if not s.greedy:
            self._ll.llama_sampler_accept(s.chain, token)
        if s.top_logprobs < 0:
            return token, None, None
        logsoftmax = _log_softmax(logits)
        return token, float(logsoftmax[token]), logsoftmax

    def _choose(self, s: SlotSampler, logits: np.ndarray, index: int) -> int:
        if s.greedy:
            # Argmax over the logits in place: the chain would first copy the whole vocabulary into a
            # candidates array (~0.7 ms for Gemma's 262k tokens, per slot and step).
            return int(logits.argmax())
        cands = self._cands
        cands["id"] = self._ids  # the chain sorts and cuts the array in place
        cands["logit"] = logits
        cands["p"] = 0.0
        array = self._array
        array.data = cands.ctypes.data_as(ctypes.POINTER(self._ll.llama_token_data))
        array.size = self.n_vocab
        array.selected = -1
        array.sorted = False
        self._ll.llama_sampler_apply(s.chain, self._array_p)
        chosen = ctypes.cast(array.data, ctypes.POINTER(self._ll.llama_token_data))[array.selected]
        return int(chosen.id)

    def _allowed(self, grammar: Any, token: int, logit: float) -> bool:
        one = self._one
        one["id"] = token
        one["logit"] = logit
        array = self._ll.llama_token_data_array(
            data=one.ctypes.data_as(ctypes.POINTER(self._ll.llama_token_data)),
            size=1,
            selected=-1,
            sorted=False,
        )
        self._ll.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(one["logit"][0]))

    def _likeliest_allowed(self, grammar: Any, logits: np.ndarray) -> int | None:
        """Greedy under a grammar without masking the whole vocabulary (~33 ms for Gemma's 262k tokens):
        the likeliest of the GREEDY_CHECKS best tokens that the grammar allows, checked one by one, which
        is the masked argmax whenever one of them is allowed; None when none is (then mask)."""
        best = np.argpartition(-logits, GREEDY_CHECKS)[:GREEDY_CHECKS]
        for token in best[np.argsort(-logits[best], kind="stable")]:
            value = float(logits[token])
            if not math.isfinite(value):
                return None
            if self._allowed(grammar, int(token), value):
                return int(token)
        return None

    def _mask(self, grammar: Any, logits: np.ndarray) -> None:
        """Sets the logits of every token the grammar does not allow now to -inf (in the context's buffer)."""
        cands = self._cands
        cands["id"] = self._ids
        cands["logit"] = logits
        array = self._ll.llama_token_data_array(
            data=cands.ctypes.data_as(ctypes.POINTER(self._ll.llama_token_data)),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )
        self._ll.llama_sampler_apply(grammar, ctypes.byref(array))
        # The grammar sampler keeps the order and the size (it only writes -inf), so ids are still 0..n-1.
        logits[:] = cands["logit"]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    finite = np.isfinite(logits)
    top = float(logits[finite].max()) if finite.any() else 0.0
    shifted = logits.astype(np.float64) - top
    total = float(np.exp(shifted[finite]).sum())
    return shifted - math.log(total)


def token_logprob(token: int, logprob: float, logsoftmax: np.ndarray, top_n: int, piece: Any) -> TokenLogprob:
    """The sampled token's entry, with the `top_n` likeliest alternatives (most likely first)."""
    top: tuple[TopLogprob, ...] = ()
    if top_n > 0:
        best = np.argpartition(-logsoftmax, top_n - 1)[:top_n]
        best = best[np.argsort(-logsoftmax[best], kind="stable")]
        top = tuple(_entry(int(t), float(logsoftmax[t]), piece) for t in best)
    raw = piece(token)
    return TokenLogprob(token=raw.decode(errors="replace"), bytes=raw, logprob=_finite(logprob), top=top)


def _entry(token: int, logprob: float, piece: Any) -> TopLogprob:
    raw = piece(token)
    return TopLogprob(token=raw.decode(errors="replace"), bytes=raw, logprob=_finite(logprob))


def _finite(value: float) -> float:
    # JSON has no -inf: OpenAI's floor for "impossible" is -9999.0.
    return value if math.isfinite(value) else -9999.0

"""A tiny but real llama-architecture GGUF model, written with the `gguf` package, for fast engine tests.

`write_tiny_gguf(path)` produces a ~0.6 MB file that llama.cpp loads in milliseconds and runs at hundreds
of tokens per second on a CPU. The weights are random (fixed numpy seed), so the text it generates is
nonsense, but it is deterministic and every generated token is a plain word piece:

Model: architecture ``llama``, 2 blocks, embedding 64, 4 heads (4 KV heads, head size 16), feed-forward
128, rope dimension 16, RMS epsilon 1e-5, context length ``n_ctx``. Norm weights are f32 ones; the other
tensors are f32 ``normal * 0.02``.

Vocabulary (SentencePiece-style, tokenizer model ``llama``), in id order:

- 0 ``<unk>`` (UNKNOWN), 1 ``<s>`` (CONTROL, BOS), 2 ``</s>`` (CONTROL, EOS);
- 3..258 the 256 byte-fallback tokens ``<0x00>``..``<0xFF>`` (BYTE);
- then NORMAL pieces: ``▁``, the letters a-z and A-Z, the digits, some punctuation, and a list of common
  English words as ``▁word`` together with every ``▁`` prefix of them (``▁t``, ``▁th``, ``▁the``).
  llama.cpp's SPM tokenizer only merges two symbols when the merged text is itself a piece, so the
  prefix chains make every listed word a single token; other lowercase words become their longest
  listed ``▁`` prefix plus single letters. Only characters outside the vocabulary (newlines, non-ASCII,
  rare punctuation) fall back to byte tokens. Scores decrease with the id.

Generation: the rows of ``output.weight`` for the three special tokens and the 256 byte tokens are zero,
so their logits are exactly 0, while the maximum over the 284 random normal-token logits is positive for
any hidden state (with 284 random rows in 64 dimensions, a direction where all of them are negative
practically does not exist). Consequences, which tests can rely on:

- greedy sampling never picks EOS, so a generation always runs to ``max_tokens`` (a penalty such as
  repeat_penalty keeps a positive logit positive, so this holds with the default llama-cpp samplers);
- no byte token is ever generated, so the output is always valid UTF-8 and the completion token count
  equals the number of generated tokens exactly;
- the output is a deterministic function of (prompt, seed, sampling settings).

These guarantees are for greedy sampling (temperature 0). With top-k sampling (llama-cpp-python's default
top_k=40) they hold in practice too, since ~half of the normal pieces have a positive logit; with plain
temperature sampling over the whole vocabulary (top_k=0, top_p=1, min_p=0) EOS and byte tokens have a
small but real probability.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import (
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGUFWriter,
    LlamaFileType,
    TokenType,
)

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]  # "llama"
MODEL_NAME = "tiny-llama-test"

N_BLOCKS = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
ROPE_DIM = 16
RMS_EPS = 1e-5

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
FIRST_BYTE_ID = 3
FIRST_NORMAL_ID = FIRST_BYTE_ID + 256  # 259

SPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker

_WORDS = (
    "the a an and or but not no yes of to in on at by for with from as is are was be it this that there "
    "i you he she we they my your what who how when where can will do have has say go get make see know "
    "like good big small little one two three time day way world hello cat dog sat mat ran red blue "
    "house tree sun book story once upon quick brown fox jumps over lazy all very so then up out"
).split()
_CAPITALIZED_WORDS = ("The", "A", "I", "It", "Hello", "Once")
_PUNCTUATION = tuple(".,!?'\"-:;()")


def _build_pieces() -> list[str]:
    pieces: dict[str, None] = {SPACE: None}  # insertion-ordered set
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        pieces[ch] = None
    for ch in _PUNCTUATION:
        pieces[ch] = None
    for word in (*_WORDS, *_CAPITALIZED_WORDS):
        marked = SPACE + word
        for end in range(2, len(marked) + 1):
            pieces[marked[:end]] = None
    return list(pieces)


NORMAL_PIECES: tuple[str, ...] = tuple(_build_pieces())
TOKENS: tuple[str, ...] = (
    "<unk>",
    "<s>",
    "</s>",
    *(f"<0x{b:02X}>" for b in range(256)),
    *NORMAL_PIECES,
)
VOCAB_SIZE = len(TOKENS)


def _token_types() -> list[int]:
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * len(NORMAL_PIECES)
    return [int(t) for t in types]


def _token_scores() -> list[float]:
    # Special and byte tokens score 0; normal pieces decrease with the id (SPM merges prefer higher).
    return [0.0] * FIRST_NORMAL_ID + [-float(i) for i in range(len(NORMAL_PIECES))]


def write_tiny_gguf(path: Path, *, chat_template: str | None = None, seed: int = 0, n_ctx: int = 512) -> Path:
    """Write the tiny llama model (see the module docstring) to `path` and return `path`.

    `seed` seeds the random weights (the vocabulary is fixed); `n_ctx` is the trained context length
    (``llama.context_length``); `chat_template`, when given, is written as ``tokenizer.chat_template``.
    Parent directories are created. An existing file is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer = GGUFWriter(path, ARCH)
    try:
        writer.add_name(MODEL_NAME)
        writer.add_file_type(LlamaFileType.ALL_F32)
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_BLOCKS)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(ROPE_DIM)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_vocab_size(VOCAB_SIZE)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(TOKENS))
        writer.add_token_scores(_token_scores())
        writer.add_token_types(_token_types())
        writer.add_unk_token_id(UNK_ID)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

        # numpy shapes are ggml's reversed: a ggml [n_embd, n_vocab] matrix is a (n_vocab, n_embd) array.
        writer.add_tensor("token_embd.weight", rand(VOCAB_SIZE, N_EMBD))
        writer.add_tensor("output_norm.weight", ones(N_EMBD))
        output = rand(VOCAB_SIZE, N_EMBD)
        output[:FIRST_NORMAL_ID] = 0.0  # specials (EOS included) and bytes: logit 0, never the argmax
        writer.add_tensor("output.weight", output)
        for i in range(N_BLOCKS):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", ones(N_EMBD))
            writer.add_tensor(f"blk.{i}.attn_q.weight", rand(N_EMBD, N_EMBD))
            writer.add_tensor(f"blk.{i}.attn_k.weight", rand(N_EMBD, N_EMBD))
            writer.add_tensor(f"blk.{i}.attn_v.weight", rand(N_EMBD, N_EMBD))
            writer.add_tensor(f"blk.{i}.attn_output.weight", rand(N_EMBD, N_EMBD))
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones(N_EMBD))
            writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(N_FF, N_EMBD))
            writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(N_FF, N_EMBD))
            writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(N_EMBD, N_FF))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def write_header_gguf(
    path: Path,
    *,
    name: str | None = None,
    file_type: gguf.LlamaFileType | None = None,
    arch: str = "llama",
    tensors: int = 1,
    vocab: int = 3,
    context_length: int | None = None,
    chat_template: str | None = None,
) -> Path:
    """A small valid GGUF for header and planning tests (not a model llama.cpp can run): general.* keys,
    a vocabulary of `vocab` tokens with scores, and `tensors` tiny tensors (0 makes a vocabulary-only
    file). general.file_type is written last, after the vocabulary, as llama.cpp's quantize does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    try:
        if name is not None:
            writer.add_name(name)
        if context_length is not None:
            writer.add_context_length(context_length)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        writer.add_token_list([f"token-{i}" for i in range(vocab)])
        writer.add_token_scores([-float(i) for i in range(vocab)])
        if file_type is not None:
            writer.add_file_type(file_type)
        for i in range(tensors):
            writer.add_tensor(f"t{i}.weight", np.zeros(4, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path

"""A model's projector (llava's mmproj): llama.cpp's multimodal library (mtmd) turns a prompt with images
into tokens and image chunks, and evaluates an image chunk into one sequence of the batcher's context.

A prompt with images becomes one list of ints, as a text prompt is: text tokens as they are, and for each
image one placeholder per position it takes (negative numbers, from the image's sha256), so the batcher's
prefix cache works unchanged: the same image in the same place is the same run of placeholders and is not
computed again. An image's first placeholder differs from the rest, so a prefix cut inside an image can be
moved back to its start (an image is computed whole). All of it runs on the compute thread.
"""

from __future__ import annotations

import ctypes
import hashlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument
from services.runner.engines.base import IMAGE_MARKER

# Placeholders: an image's first position is an odd negative number, the rest the even one below it.
_PLACEHOLDER_SPACE = 1 << 29


def _placeholders(data: bytes, n_pos: int) -> list[int]:
    h = int.from_bytes(hashlib.sha256(data).digest()[:4], "big") % _PLACEHOLDER_SPACE
    start = -(2 * h + 1)
    return [start] + [start - 1] * (n_pos - 1)


def is_image_start(token: int) -> bool:
    return token < 0 and token % 2 == 1


def snap_to_image_start(tokens: list[int], keep: int) -> int:
    """`keep` moved back to the start of the image it cuts into (unchanged when it cuts none)."""
    while 0 < keep < len(tokens) and tokens[keep] < 0 and not is_image_start(tokens[keep]):
        keep -= 1
    return keep


@dataclass(eq=False)
class MediaPrompt:
    """A prompt with images as the batcher reads it: `tokens` (placeholders for image positions) and the
    image chunk that starts at each placeholder run, by its index in `tokens`. The chunks are freed with
    this object."""

    tokens: list[int]
    images: dict[int, tuple[Any, int]] = field(default_factory=dict)  # start -> (chunk, positions)

    def next_image(self, start: int, end: int) -> int:
        """The index of the first image start in tokens[start:end], or `end`."""
        for i in range(start, end):
            if is_image_start(self.tokens[i]):
                return i
        return end


class Projector:
    """The mtmd context of one loaded model and its projector file."""

    def __init__(self, path: Path, model: Any, *, threads: int, use_gpu: bool) -> None:
        try:
            from llama_cpp import mtmd_cpp
        except (OSError, FileNotFoundError):  # llama-cpp-python built without its multimodal library
            raise FailedPrecondition(
                f"this runner cannot load the projector {path.name}: its llama.cpp was built without the "
                "multimodal library (libmtmd; build llama-cpp-python without -DLLAVA_BUILD=OFF)",
                code="no_multimodal_support",
            ) from None
        from llama_cpp._logger import llama_log_callback

        self._mtmd = mtmd_cpp
        mtmd_cpp.mtmd_log_set(llama_log_callback, ctypes.c_void_p(0))  # errors only, as llama.cpp's own
        mtmd_cpp.mtmd_helper_log_set(llama_log_callback, ctypes.c_void_p(0))
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        self._marker = IMAGE_MARKER.encode()
        params.media_marker = self._marker
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model, params)
        if not self._ctx:
            raise FailedPrecondition(
                f"llama.cpp could not load the projector {path.name} (is it a projector for this model? its "
                "output width must equal the model's embedding width)",
                code="projector_load_failed",
            )
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise FailedPrecondition(f"the projector {path.name} has no vision encoder")

    def tokenize(
        self, text: bytes, images: list[bytes], add_special: bool, parse_special: bool
    ) -> MediaPrompt:
        """The prompt (IMAGE_MARKER where each image goes) with its images decoded and cut into chunks;
        InvalidArgument for an image that is not one, or markers that do not match the images."""
        m = self._mtmd
        places = text.count(self._marker)
        if places != len(images):  # a chat template that leaves out some messages' content, say
            raise InvalidArgument(
                f"the prompt has {places} places for images and the request {len(images)} images: the images "
                "and the places for them do not match",
                param="messages",
            )
        bitmaps = [self._bitmap(data, i) for i, data in enumerate(images)]
        chunks = m.mtmd_input_chunks_init()
        try:
            given = m.mtmd_input_text(text, len(text), add_special, parse_special)
            array = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = m.mtmd_tokenize(self._ctx, chunks, ctypes.byref(given), array, len(bitmaps))
        finally:
            for bitmap in bitmaps:
                m.mtmd_bitmap_free(bitmap)
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise InvalidArgument(
                f"llama.cpp could not read the images (mtmd_tokenize {rc})", param="messages"
            )
        prompt = MediaPrompt(tokens=[])
        weakref.finalize(prompt, m.mtmd_input_chunks_free, chunks)
        image = 0
        for i in range(m.mtmd_input_chunks_size(chunks)):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            kind = m.mtmd_input_chunk_get_type(chunk)
            if kind == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                tokens = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                prompt.tokens.extend(tokens[j] for j in range(n.value))
            elif kind == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n_pos = int(m.mtmd_input_chunk_get_n_pos(chunk))
                prompt.images[len(prompt.tokens)] = (chunk, n_pos)
                prompt.tokens.extend(_placeholders(images[image], n_pos))
                image += 1
            else:
                raise InvalidArgument("only images are read here, not audio", param="messages")
        if prompt.tokens and prompt.tokens[-1] < 0:
            raise InvalidArgument("a prompt may not end in an image", param="messages")
        return prompt

    def _bitmap(self, data: bytes, index: int) -> Any:
        m = self._mtmd
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        wrapped = m.mtmd_helper_bitmap_init_from_buf_wrapper(
            self._ctx, buf, len(data), False, m.mtmd_helper_init_opt_default()
        )
        if wrapped.video_ctx:
            m.mtmd_helper_video_free(wrapped.video_ctx)
        bitmap = wrapped.bitmap
        if not bitmap or m.mtmd_bitmap_is_audio(bitmap):
            if bitmap:
                m.mtmd_bitmap_free(bitmap)
            raise InvalidArgument(
                f"image {index + 1} of the request could not be decoded (PNG, JPEG, GIF, BMP...)",
                param="messages",
            )
        return bitmap

    def evaluate(self, ctx: Any, chunk: Any, n_past: int, seq: int, n_batch: int) -> None:
        """Encodes an image chunk and decodes its embeddings into sequence `seq` from position `n_past`."""
        m = self._mtmd
        new_n_past = m.llama_cpp.llama_pos(0)
        rc = m.mtmd_helper_eval_chunk_single(
            self._ctx, ctx, chunk, n_past, seq, n_batch, False, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise InvalidArgument(f"llama.cpp could not read an image (mtmd {rc})", param="messages")

    def close(self) -> None:
        if self._ctx:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None

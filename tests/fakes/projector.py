"""A tiny but real vision projector (an "mmproj" GGUF), written with the `gguf` package, for image tests.

No trained projector can be had offline, but llama.cpp's multimodal library (mtmd) loads one with random
weights and splices its image embeddings into the prompt as a trained one's: good for the plumbing (the
prompt grows by the image's positions, several images, a broken image, a width that does not match the
model), not for "does the model understand the image".

Projector type ``gemma3`` (a SigLIP-style ViT, then an average pool by ``merge``, an RMS norm and a linear
projection into the language model's embedding width). Defaults: images resized to 32x32, patches of 8
(16 patches), vision width 32, feed-forward 64, 1 block, 2 heads, merge 2: every image becomes
``IMAGE_TOKENS`` = 4 embeddings, which mtmd wraps in the text ``<start_of_image>`` ... ``<end_of_image>``
(tokenized by the language model, so any model works). ``llm_width`` must be the language model's
embedding width (64 for tests/fakes/tiny_gguf.py, 640 for Gemma 3 270M); another width is a load error.

Every key is written with GGUFWriter's typed helpers: a key of the wrong type (int32 for a uint32) aborts
the whole process in llama.cpp, a test run included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

IMAGE_SIZE = 32
PATCH = 8
MERGE = 2
# Embeddings per image: (32 / 8)^2 = 16 patches, pooled 2x2.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2 // (MERGE * MERGE)


def write_projector(
    path: Path,
    llm_width: int,
    *,
    width: int = 32,
    ffn: int = 64,
    blocks: int = 1,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    writer = GGUFWriter(str(path), "clip")
    writer.add_name("tiny-projector-test")
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("gemma3")
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH)
    writer.add_vision_embedding_length(width)
    writer.add_vision_feed_forward_length(ffn)
    writer.add_vision_block_count(blocks)
    writer.add_vision_head_count(heads)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_projection_dim(llm_width)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(MERGE)

    n_patches = (IMAGE_SIZE // PATCH) ** 2
    writer.add_tensor("v.patch_embd.weight", weight(width, 3, PATCH, PATCH))
    writer.add_tensor("v.patch_embd.bias", zeros(width))
    writer.add_tensor("v.position_embd.weight", weight(n_patches, width))
    for i in range(blocks):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", weight(width, width))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", zeros(width))
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{norm}.weight", ones(width))
            writer.add_tensor(f"v.blk.{i}.{norm}.bias", zeros(width))
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", weight(ffn, width))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", zeros(ffn))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", weight(width, ffn))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", zeros(width))
    writer.add_tensor("v.post_ln.weight", ones(width))
    writer.add_tensor("v.post_ln.bias", zeros(width))
    writer.add_tensor("mm.soft_emb_norm.weight", ones(width))
    writer.add_tensor("mm.input_projection.weight", weight(width, llm_width))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def png(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small valid PNG of one color (no image library needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(color) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )

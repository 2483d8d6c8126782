"""`jan pull`'s guess of the id the catalog gave a model created from a file URL (cli/downloads.py) must be
the catalog's own derivation, or a second `jan pull URL` would not find the model the first one made."""

from __future__ import annotations

import pytest

from cli.downloads import derived_model_id
from services.catalog.authoring import derive_id
from services.catalog.model import file_name_from_url, hf_resolve_url

URLS = [
    "https://models.example/org/repo/resolve/main/tiny-Q4_K_M.gguf",
    "https://huggingface.co/org/repo/blob/main/weights.v2.gguf?download=true",
    "https://models.example/files/..hidden%20name+(copy).gguf",
    "https://models.example/files/%C3%A9t%C3%A9/caf%C3%A9.bin/",
    "https://models.example/" + "a" * 250 + ".gguf",
]


@pytest.mark.parametrize("url", URLS)
def test_derived_id_is_the_catalogs(url: str) -> None:
    folder, stem = derive_id("", file_name_from_url(hf_resolve_url(url)), remote=False)
    assert derived_model_id(url) == f"{folder}/{stem}"

"""`jan models list` and `jan models show` against a real catalog gRPC server and the gateway on a loopback
port: what each model can do (`metadata.capabilities`), as the catalog derives it from the files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cli.main import app
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from tests.fakes import chat_templates
from tests.fakes.projector import write_projector
from tests.fakes.tiny_gguf import N_EMBD, write_tiny_gguf
from tests.harness import listening_gateway, serving_catalog

ENV: dict[str, str | None] = {"JAN_API_KEY": None, "COLUMNS": "250", "NO_COLOR": "1", "FORCE_COLOR": None}


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    root = tmp_path / "jan"
    folder = root / "models" / "llava"
    write_tiny_gguf(folder / "llava-Q4_K_M.gguf", chat_template=chat_templates.QWEN25_INSTRUCT)
    write_projector(folder / "mmproj-f16.gguf", N_EMBD)
    (folder / "llava-Q4_K_M.json").write_text("{}")
    plain = root / "models" / "plain"
    write_tiny_gguf(plain / "plain.gguf")
    (plain / "plain.json").write_text('{"metadata": {"capabilities": []}}')
    settings = CatalogSettings(root=root, port=0, seed_models_dir=None, watch=False)
    async with (
        serving_catalog(Catalog(settings)) as address,
        listening_gateway(catalog_address=address) as url,
    ):
        yield url


async def jan(url: str, *args: str) -> Result:
    # The command line is blocking: it runs in a thread while the servers answer on this loop.
    result = await asyncio.to_thread(CliRunner().invoke, app, ["--url", url, *args], env=ENV)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


async def test_list_has_a_capabilities_column(url: str) -> None:
    lines = (await jan(url, "models", "list")).stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "ENGINE", "QUANT", "CAPABILITIES", "OWNER"]
    llava = next(line for line in lines if line.startswith("llava/llava-Q4_K_M "))
    assert "completion,vision,tools" in llava.split()
    plain = next(line for line in lines if line.startswith("plain/plain "))
    assert plain.split()[-2] == "-"  # the object says it has none (its QUANT is empty)


async def test_show_has_a_capabilities_line(url: str) -> None:
    out = (await jan(url, "models", "show", "llava/llava-Q4_K_M")).stdout
    line = next(line for line in out.splitlines() if line.startswith("Capabilities"))
    assert line.split()[1:] == ["completion,vision,tools"]

"""e2e: the real processes (as `make up` starts them) with a folder of GGUF files imported in place by
`jan models import DIR` and a watched directory: the runner loads a model whose binary is a link to the
user's file and answers through the official openai SDK; `jan storage` says nothing was stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from cli.stack import Stack
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import CHAT_TEMPLATE, process_stack, wait_for

pytestmark = pytest.mark.e2e

CLI_ENV = {"JAN_API_KEY": None, "COLUMNS": "250", "FORCE_COLOR": None, "NO_COLOR": "1"}
runner = CliRunner()


def jan(url: str, *args: str) -> Result:
    result = runner.invoke(app, list(args), env={"JAN_URL": url, **CLI_ENV})
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("ggufs")
    write_tiny_gguf(src / "Tiny-Chat-Q8_0.gguf", chat_template=CHAT_TEMPLATE, seed=1)
    write_tiny_gguf(src / "nested" / "Tiny-Chat-Q4_K_M.gguf", chat_template=CHAT_TEMPLATE, seed=2)
    return src, tmp_path_factory.mktemp("watched")


@pytest.fixture(scope="module")
def stack(dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    src, watched = dirs
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": str(src),
        "JAN_CATALOG_WATCH_DIRS": str(watched),
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_RUNNER_THREADS": "1",
    }
    with process_stack(tmp_path_factory.mktemp("janinplace"), env) as s:
        yield s


def test_a_folder_imported_in_place_runs_and_stores_nothing(stack: Stack, dirs: tuple[Path, Path]) -> None:
    src, _ = dirs
    out = jan(stack.url, "models", "import", str(src)).output
    assert "+ Tiny-Chat/Tiny-Chat-Q8_0" in out and "+ Tiny-Chat/Tiny-Chat-Q4_K_M" in out
    assert "2 new, 0 imported before, in Tiny-Chat" in out
    assert "0 new, 2 imported before" in jan(stack.url, "models", "import", str(src)).output

    link = stack.root / "models" / "Tiny-Chat" / "Tiny-Chat-Q8_0.gguf"
    assert link.is_symlink() and link.stat().st_ino == (src / "Tiny-Chat-Q8_0.gguf").stat().st_ino

    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model="Tiny-Chat/Tiny-Chat-Q8_0",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    storage = jan(stack.url, "storage").output
    assert "Stored" in storage and "Used in place" in storage
    usage = jan(stack.url, "storage", "--json").output
    assert '"stored_bytes": 0' in usage


def test_a_watched_directory_follows_its_files(stack: Stack, dirs: tuple[Path, Path]) -> None:
    _, watched = dirs
    write_tiny_gguf(watched / "Watched-Q8_0.gguf", seed=3)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0)

    def listed() -> set[str]:
        return {m.id for m in client.models.list()}

    wait_for(lambda: "Watched/Watched-Q8_0" in listed())
    (watched / "Watched-Q8_0.gguf").unlink()
    wait_for(lambda: "Watched/Watched-Q8_0" not in listed())

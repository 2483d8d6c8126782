"""`metadata.capabilities` in the catalog's answers: derived from a local import's GGUF, a directory's
projector, declared binaries before any download, files that arrive later; the object's own value wins;
each header is read once per file version and never by a list."""

from __future__ import annotations

from pathlib import Path

import orjson

from jan.model.v1 import model_pb2
from tests.fakes import chat_templates
from tests.fakes.projector import write_projector
from tests.fakes.tiny_gguf import N_EMBD, write_header_gguf, write_tiny_gguf
from tests.unit.conftest import write

THINKING = "{% for m in messages %}{{ m['content'] }}{% endfor %}<think>\n"


def capabilities(model: model_pb2.Model) -> list[str]:
    return list(orjson.loads(model.metadata_json)["capabilities"])


async def test_a_local_import_of_a_gguf_whose_template_takes_tools(make_catalog, tmp_path: Path) -> None:
    source = write_tiny_gguf(
        tmp_path / "imports" / "qwen-Q4_K_M.gguf", chat_template=chat_templates.QWEN25_INSTRUCT
    )
    cat = await make_catalog()
    model = await cat.create(source_url=str(source))
    assert capabilities(model) == ["completion", "tools"]
    listed = {m.id: m for m in cat.list_models()[0]}
    assert capabilities(listed[model.id]) == ["completion", "tools"]
    # Not written into the json: the file keeps what the user (here: the import) wrote.
    json_path = tmp_path / "jan" / model.path
    assert "capabilities" not in orjson.loads(json_path.read_bytes()).get("metadata", {})


async def test_a_directory_with_a_projector_gives_vision(make_catalog, tmp_path: Path) -> None:
    directory = tmp_path / "imports" / "llava"
    write_tiny_gguf(directory / "llava-Q4_K_M.gguf", chat_template=THINKING)
    write_projector(directory / "mmproj-llava-f16.gguf", N_EMBD)
    cat = await make_catalog()
    source = cat.source_directory(str(directory))
    assert source is not None
    imported = await cat.import_directory(source)
    (model,) = imported.models
    assert [b.name for b in model.binaries] == ["llava-Q4_K_M.gguf", "mmproj-llava-f16.gguf"]
    assert capabilities(model) == ["completion", "vision", "reasoning"]


async def test_before_the_files_are_there_names_say_what_they_can(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "llava"
    binaries = [
        {"name": "llava-Q4_K_M.gguf", "url": "https://models.example/llava-Q4_K_M.gguf"},
        {"name": "mmproj-f16.gguf", "url": "https://models.example/mmproj-f16.gguf"},
    ]
    write(folder / "llava.json", {"metadata": {"binaries": binaries}})
    cat = await make_catalog()
    model = await cat.get("llava/llava")
    assert model.state == model_pb2.MODEL_STATE_NOT_DOWNLOADED
    assert capabilities(model) == ["completion", "vision"]
    # The download completes: the files are renamed into the folder and the downloader writes back their
    # sizes through UpdateModel; the headers add what they say.
    model_file = write_tiny_gguf(folder / "llava-Q4_K_M.gguf", chat_template=chat_templates.LLAMA31_INSTRUCT)
    projector = write_projector(folder / "mmproj-f16.gguf", N_EMBD)
    sizes = {"llava-Q4_K_M.gguf": model_file.stat().st_size, "mmproj-f16.gguf": projector.stat().st_size}
    learned = [{**b, "size": sizes[b["name"]]} for b in binaries]
    model = await cat.update("llava/llava", metadata_patch={"binaries": learned})
    assert model.state == model_pb2.MODEL_STATE_STOPPED
    assert capabilities(model) == ["completion", "vision", "tools"]


async def test_the_objects_own_capabilities_win(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "mine"
    write_tiny_gguf(folder / "mine.gguf", chat_template=chat_templates.QWEN25_INSTRUCT)
    path = write(folder / "mine.json", {"metadata": {"capabilities": ["vision", "audio"]}})
    cat = await make_catalog()
    assert capabilities(await cat.get("mine/mine")) == ["vision", "audio"]
    assert cat.index.headers.reads == 0  # nothing to derive: the file was not read
    # Removing the hand edit (a merge patch with null) brings the derived value back.
    model = await cat.update("mine/mine", metadata_patch={"capabilities": None})
    assert capabilities(model) == ["completion", "tools"]
    assert "capabilities" not in orjson.loads(path.read_bytes())["metadata"]
    model = await cat.update("mine/mine", metadata_patch={"capabilities": []})
    assert capabilities(model) == []


async def test_an_encoder_is_an_embedding_model(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "embed"
    write_header_gguf(folder / "embed.gguf", arch="nomic-bert")
    write(folder / "embed.json", {})
    cat = await make_catalog()
    assert capabilities(await cat.get("embed/embed")) == ["embedding"]


async def test_headers_are_read_once_per_file_version_and_never_by_a_list(
    make_catalog, tmp_path: Path
) -> None:
    folder = tmp_path / "jan" / "models" / "tiny"
    gguf = write_tiny_gguf(folder / "tiny.gguf")
    write(folder / "tiny.json", {})
    cat = await make_catalog()
    assert capabilities(await cat.get("tiny/tiny")) == ["completion"]
    reads = cat.index.headers.reads
    assert reads == 1
    for _ in range(3):
        cat.list_models()
        await cat.get("tiny/tiny")  # a get refreshes the folder: a stat, not a read
        await cat.rescan_all()
    assert cat.index.headers.reads == reads
    # The file is rewritten (another version): it is read again, and its new template counts.
    write_tiny_gguf(gguf, chat_template=THINKING)
    assert capabilities(await cat.get("tiny/tiny")) == ["completion", "reasoning"]
    assert cat.index.headers.reads == reads + 1

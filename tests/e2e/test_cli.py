"""e2e tests of the `jan` command line against a real stack (catalog + gateway processes)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from cli.client import CliError, JanClient
from cli.main import app
from cli.stack import Stack, free_port

pytestmark = pytest.mark.e2e

TINYLLAMA = "tinyllama-1.1b-chat/tinyllama-1.1b-chat-v1.0-Q4_K_M"

runner = CliRunner()


def jan(url: str, *args: str, input: str | None = None) -> Result:
    """Runs `jan ARGS` against the gateway at url, with plain, wide output."""
    env: dict[str, str | None] = {
        "JAN_URL": url,
        "JAN_API_KEY": None,
        "COLUMNS": "250",
        "FORCE_COLOR": None,
        "TTY_COMPATIBLE": None,
        "NO_COLOR": "1",
    }
    return runner.invoke(app, list(args), env=env, input=input)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def failed(result: Result) -> Result:
    """Asserts an expected failure: exit 1, one `error: ...` line on stderr, no traceback."""
    assert result.exit_code == 1, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return result


def model_ids(url: str, *args: str) -> dict[str, dict[str, Any]]:
    body = json.loads(ok(jan(url, "models", "list", "--json", *args)).stdout)
    assert body["object"] == "list"
    return {m["id"]: m for m in body["data"]}


def write_model_file(path: Path, size: int = 4096) -> bytes:
    data = bytes(range(256)) * (size // 256)
    path.write_bytes(data)
    return data


# --- list -------------------------------------------------------------------------------------------------


def test_list_shows_seeded_models(stack: Stack) -> None:
    out = ok(jan(stack.url, "models", "list")).stdout
    header = out.splitlines()[0].split()
    assert header == ["ID", "NAME", "STATE", "ENGINE", "QUANT", "CAPABILITIES", "OWNER"]
    line = next(line for line in out.splitlines() if line.startswith(TINYLLAMA + " "))
    assert "not-downloaded" in line
    assert "llamacpp" in line
    assert "Q4_K_M" in line
    assert "TheBloke" in line


def test_list_json_and_filters(stack: Stack) -> None:
    models = model_ids(stack.url)
    assert models[TINYLLAMA]["state"] == "not-downloaded"
    assert models[TINYLLAMA]["metadata"]["engine"] == "llamacpp"

    not_downloaded = model_ids(stack.url, "--state", "not-downloaded", "--engine", "llamacpp")
    assert TINYLLAMA in not_downloaded
    assert all(m["state"] == "not-downloaded" for m in not_downloaded.values())
    assert TINYLLAMA not in model_ids(stack.url, "--state", "stopped", "--state", "running")
    assert model_ids(stack.url, "--engine", "no-such-engine") == {}

    # A state the API does not know is refused by the command line itself (usage error).
    assert jan(stack.url, "models", "list", "--state", "bogus").exit_code == 2


def test_list_reports_invalid_model_files(stack: Stack) -> None:
    broken = stack.root / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "x.json").write_text('{"parameters": 3}')
    try:
        deadline = time.monotonic() + 5.0
        while True:
            out = ok(jan(stack.url, "models", "list")).stdout
            if "models/broken/x.json" in out or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        problems = httpx.get(f"{stack.url}/v1/catalog/problems", timeout=5).json()["data"]
        problem = next(p for p in problems if p["path"] == "models/broken/x.json")
        assert "parameters" in problem["reason"]
        assert "invalid model file" in out
        assert f"models/broken/x.json: {problem['reason']}" in out
        # The valid models are still listed above the problems.
        assert out.index(TINYLLAMA) < out.index("models/broken/x.json")
    finally:
        (broken / "x.json").unlink()
        broken.rmdir()


# --- import / show / rm -----------------------------------------------------------------------------------


def test_import_show_rm_local_file(stack: Stack, imports_dir: Path) -> None:
    source = imports_dir / "tiny-Q4_K_M.gguf"
    data = write_model_file(source)
    model_id = "tiny-Q4_K_M/tiny-Q4_K_M"

    out = ok(jan(stack.url, "models", "import", str(source))).stdout
    assert f"created {model_id} (stopped)" in out
    assert model_ids(stack.url, "--state", "stopped")[model_id]["metadata"]["quantization"] == "Q4_K_M"

    out = ok(jan(stack.url, "models", "show", model_id)).stdout
    assert model_id in out
    assert "stopped" in out
    binary_line = next(line for line in out.splitlines() if line.startswith("tiny-Q4_K_M.gguf"))
    assert "4.0 KiB" in binary_line
    assert "✓" in binary_line
    assert "Parameters" in out

    shown = json.loads(ok(jan(stack.url, "models", "show", model_id, "--json")).stdout)
    assert shown["id"] == model_id
    assert shown["state"] == "stopped"
    assert shown["engine"] == "llamacpp"
    assert shown["binaries"] == [
        {
            "name": "tiny-Q4_K_M.gguf",
            "url": "",
            "size": len(data),
            "sha256": "",
            "present": True,
            "external_path": "",
        }
    ]
    assert shown["state_detail"]["reason"] == ""

    out = ok(jan(stack.url, "models", "rm", "-y", model_id)).stdout
    assert f"deleted {model_id}" in out
    assert source.read_bytes() == data, "deleting a model must keep the imported original"
    assert model_id not in model_ids(stack.url)
    assert "not found" in failed(jan(stack.url, "models", "show", model_id)).stderr


def test_import_relative_path_with_options(
    stack: Stack, imports_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model_file(imports_dir / "rel-Q8_0.gguf", 1024)
    monkeypatch.chdir(imports_dir)
    model_id = "relative/rel-model"
    args = ("models", "import", "rel-Q8_0.gguf", "--id", model_id, "--name", "Relative", "--mode", "copy")
    assert f"created {model_id} (stopped)" in ok(jan(stack.url, *args)).stdout
    try:
        shown = json.loads(ok(jan(stack.url, "models", "show", model_id, "--json")).stdout)
        assert shown["name"] == "Relative"
        assert shown["metadata"]["quantization"] == "Q8_0"
        copied = stack.root / "models" / "relative" / "rel-Q8_0.gguf"
        assert copied.stat().st_ino != (imports_dir / "rel-Q8_0.gguf").stat().st_ino
        # The same id twice is refused with the gateway's message.
        assert "already exists" in failed(jan(stack.url, *args)).stderr
    finally:
        ok(jan(stack.url, "models", "rm", "-y", model_id))
    assert (imports_dir / "rel-Q8_0.gguf").is_file()


def test_rm_asks_for_confirmation(stack: Stack, imports_dir: Path) -> None:
    write_model_file(imports_dir / "ask-Q4_0.gguf", 512)
    model_id = "ask-Q4_0/ask-Q4_0"
    ok(jan(stack.url, "models", "import", str(imports_dir / "ask-Q4_0.gguf")))

    declined = jan(stack.url, "models", "rm", model_id, input="n\n")
    assert declined.exit_code == 1
    assert model_id in model_ids(stack.url)

    assert f"deleted {model_id}" in ok(jan(stack.url, "models", "rm", model_id, input="y\n")).stdout
    assert model_id not in model_ids(stack.url)


def test_a_file_the_server_may_not_read_is_uploaded(stack: Stack, tmp_path: Path) -> None:
    # Outside JAN_IMPORT_ALLOWED_DIRS, as any file on the client's machine is for a gateway in a container
    # or on a cluster: the server refuses to read it, so the CLI sends it (json + file as one archive).
    outside = tmp_path / "outside-Q4_K_M.gguf"
    write_model_file(outside)
    result = ok(jan(stack.url, "models", "import", str(outside), "--name", "Sent over"))
    assert "outside the directories allowed for import" in result.stderr and "uploading it" in result.stderr
    assert "created outside-Q4_K_M/outside-Q4_K_M (stopped)" in result.stdout
    model = model_ids(stack.url)["outside-Q4_K_M/outside-Q4_K_M"]
    assert model["name"] == "Sent over" and model["state"] == "stopped"
    folder = stack.root / "models" / "outside-Q4_K_M"
    assert (folder / "outside-Q4_K_M.gguf").read_bytes() == outside.read_bytes()
    assert outside.exists()  # the user's file stays where it was

    # An id names the folder and the file; a folder that exists already is refused, nothing changed.
    ok(jan(stack.url, "models", "import", str(outside), "--id", "sent/copy"))
    assert "sent/copy" in model_ids(stack.url)
    result = jan(stack.url, "models", "import", str(outside), "--id", "sent/again")
    assert result.exit_code == 1 and "error: model folder sent already exists" in result.stderr
    assert "sent/again" not in model_ids(stack.url)


def test_import_missing_file_fails(stack: Stack, imports_dir: Path) -> None:
    err = failed(jan(stack.url, "models", "import", str(imports_dir / "absent.gguf"))).stderr
    assert "is not a file" in err


def test_show_and_rm_unknown_model(stack: Stack) -> None:
    assert "not found" in failed(jan(stack.url, "models", "show", "nope/nothing")).stderr
    assert "not found" in failed(jan(stack.url, "models", "rm", "-y", "nope/nothing")).stderr
    # An id without a folder gets the gateway's explanation of the id format.
    assert "<folder>/<file>" in failed(jan(stack.url, "models", "show", "nofolder")).stderr


# --- archives ---------------------------------------------------------------------------------------------


def make_archive(path: Path, top: str, stem: str, payload: bytes) -> None:
    model = {"source_url": "./", "name": "From an archive", "metadata": {"binaries": [f"{stem}.gguf"]}}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in ((f"{stem}.json", json.dumps(model).encode()), (f"{stem}.gguf", payload)):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_import_archive(stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "arch.tar.gz"
    make_archive(archive, "arch", "arch-Q4_K_M", b"\0" * 3000)

    out = ok(jan(stack.url, "models", "import-archive", str(archive))).stdout
    assert "imported folder arch: 1 model" in out
    assert "arch/arch-Q4_K_M (stopped)" in out

    out = ok(jan(stack.url, "models", "import-archive", str(archive), "--folder", "arch-copy")).stdout
    assert "imported folder arch-copy: 1 model" in out
    models = model_ids(stack.url)
    assert models["arch/arch-Q4_K_M"]["name"] == "From an archive"
    assert models["arch-copy/arch-Q4_K_M"]["state"] == "stopped"

    assert "already exists" in failed(jan(stack.url, "models", "import-archive", str(archive))).stderr
    assert "not a file" in failed(jan(stack.url, "models", "import-archive", str(tmp_path / "no.tgz"))).stderr
    for model_id in ("arch/arch-Q4_K_M", "arch-copy/arch-Q4_K_M"):
        ok(jan(stack.url, "models", "rm", "-y", model_id))


def test_export_unknown_folder_leaves_no_file(stack: Stack, tmp_path: Path) -> None:
    dest = tmp_path / "out.tar.gz"
    assert "not found" in failed(jan(stack.url, "models", "export", "no-such-folder", "-o", str(dest))).stderr
    assert list(tmp_path.iterdir()) == []


def test_export_then_import_archive_round_trip(
    stack: Stack, imports_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Incompressible and over 1 MiB, so that the archive is streamed in several chunks.
    data = os.urandom(3 * 1024 * 1024)
    (imports_dir / "rt-Q4_K_M.gguf").write_bytes(data)
    ok(jan(stack.url, "models", "import", str(imports_dir / "rt-Q4_K_M.gguf")))
    try:
        monkeypatch.chdir(tmp_path)
        out = ok(jan(stack.url, "models", "export", "rt-Q4_K_M")).stdout
        archive = tmp_path / "rt-Q4_K_M.tar.gz"
        assert "exported rt-Q4_K_M to rt-Q4_K_M.tar.gz" in out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rt-Q4_K_M.tar.gz"]
        with tarfile.open(archive) as tar:
            assert sorted(tar.getnames()) == [
                "rt-Q4_K_M",
                "rt-Q4_K_M/rt-Q4_K_M.gguf",
                "rt-Q4_K_M/rt-Q4_K_M.json",
            ]
        # Exporting again to the same file needs --force.
        assert (
            "already exists"
            in failed(jan(stack.url, "models", "export", "rt-Q4_K_M", "-o", str(archive))).stderr
        )

        out = ok(jan(stack.url, "models", "import-archive", str(archive), "--folder", "rt-copy")).stdout
        assert "rt-copy/rt-Q4_K_M (stopped)" in out
        shown = json.loads(ok(jan(stack.url, "models", "show", "rt-copy/rt-Q4_K_M", "--json")).stdout)
        assert shown["state"] == "stopped"
        assert shown["binaries"][0]["size"] == len(data)
        assert (stack.root / "models" / "rt-copy" / "rt-Q4_K_M.gguf").read_bytes() == data
        ok(jan(stack.url, "models", "rm", "-y", "rt-copy/rt-Q4_K_M"))
    finally:
        ok(jan(stack.url, "models", "rm", "-y", "rt-Q4_K_M/rt-Q4_K_M"))


# --- connection and client --------------------------------------------------------------------------------


def test_unreachable_gateway(stack: Stack) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    err = failed(jan(url, "models", "list")).stderr
    assert f"cannot reach the gateway at {url}" in err
    assert "is it running?" in err
    # --url wins over JAN_URL.
    result = runner.invoke(app, ["--url", url, "models", "show", TINYLLAMA], env={"JAN_URL": stack.url})
    assert "cannot reach the gateway" in failed(result).stderr


def test_client_sends_api_key_and_reads_error_shapes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": []})
        if request.url.path.startswith("/v1/models/"):
            error = {"message": "model a/b not found", "type": "not_found_error", "code": "model_not_found"}
            return httpx.Response(404, json={"error": error})
        return httpx.Response(502, text="<html>Bad gateway</html>")

    with JanClient("http://jan.test/", api_key="secret", transport=httpx.MockTransport(handler)) as client:
        assert client.list_models(["stopped"], ["llamacpp"]) == []
        with pytest.raises(CliError) as not_found:
            client.get_model("a/b")
        with pytest.raises(CliError) as bad_gateway:
            client.list_problems()
    assert seen[0].headers["Authorization"] == "Bearer secret"
    assert seen[0].url.params.multi_items() == [("state", "stopped"), ("engine", "llamacpp")]
    assert (not_found.value.message, not_found.value.status, not_found.value.code) == (
        "model a/b not found",
        404,
        "model_not_found",
    )
    assert bad_gateway.value.status == 502
    assert "HTTP 502" in bad_gateway.value.message

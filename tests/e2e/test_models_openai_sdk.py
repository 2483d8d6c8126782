"""The real processes, as `make up` starts them, driven by the official openai SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from cli.stack import Stack, free_port
from tests.harness import wait_for

pytestmark = pytest.mark.e2e

SEEDED = "tinyllama-1.1b-chat/tinyllama-1.1b-chat-v1.0-Q4_K_M"


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=10)


def test_list_and_retrieve_the_seeded_models(client: openai.OpenAI) -> None:
    models = client.models.list().data
    ids = [m.id for m in models]
    assert SEEDED in ids
    assert "zephyr-7b-beta/zephyr-7b-beta-Q4_K_M" in ids
    model = client.models.retrieve(SEEDED)
    assert model.id == SEEDED
    assert model.object == "model"
    assert model.owned_by == "TheBloke"
    assert model.created > 1_600_000_000
    extra = model.model_extra or {}
    assert extra["state"] == "not-downloaded"
    assert extra["metadata"]["engine"] == "llamacpp"
    assert extra["metadata"]["quantization"] == "Q4_K_M"


def test_import_retrieve_and_delete_a_local_model(
    client: openai.OpenAI, stack: Stack, imports_dir: Path
) -> None:
    original = imports_dir / "pocket-Q8_0.gguf"
    original.write_bytes(b"GGUF" + os.urandom(4096))
    resp = httpx.post(
        f"{stack.url}/v1/models", json={"source_url": str(original), "name": "Pocket"}, timeout=10
    )
    assert resp.status_code == 201, resp.text
    model_id = resp.json()["id"]
    assert model_id == "pocket-Q8_0/pocket-Q8_0"
    model = client.models.retrieve(model_id)
    assert (model.model_extra or {})["state"] == "stopped"
    assert model_id in [m.id for m in client.models.list().data]
    deleted = client.models.delete(model_id)
    assert deleted.id == model_id and deleted.deleted is True
    assert original.exists()
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve(model_id)
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_hand_edits_show_up_without_a_restart(client: openai.OpenAI, stack: Stack) -> None:
    path = stack.root / "models" / "handmade" / "hm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"name": "first"}))
    wait_for(lambda: "handmade/hm" in [m.id for m in client.models.list().data])
    path.write_bytes(orjson.dumps({"name": "second", "parameters": {"ctx_len": 1024}}))
    wait_for(
        lambda: {m.id: m for m in client.models.list().data}["handmade/hm"].model_extra["name"] == "second"
    )
    path.write_bytes(b'{"parameters": "oops"}')
    wait_for(lambda: "handmade/hm" not in [m.id for m in client.models.list().data])
    problems = httpx.get(f"{stack.url}/v1/catalog/problems").json()["data"]
    assert any(p["id"] == "handmade/hm" and "'parameters' must be an object" in p["reason"] for p in problems)
    with pytest.raises(openai.UnprocessableEntityError):
        client.models.retrieve("handmade/hm")
    path.unlink()
    path.parent.rmdir()
    wait_for(
        lambda: (
            not any(
                p["id"] == "handmade/hm" for p in httpx.get(f"{stack.url}/v1/catalog/problems").json()["data"]
            )
        )
    )


def test_ids_escaping_the_root_are_refused(client: openai.OpenAI, stack: Stack) -> None:
    for bad in ("../etc", "..%2F..%2Fetc%2Fpasswd", ".hidden/x"):
        resp = httpx.get(f"{stack.url}/v1/models/{bad}")
        assert resp.status_code in (400, 404)
        assert "error" in resp.json()
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)):
        client.models.delete("../../etc/passwd")


def test_make_up_style_launcher_starts_and_stops_the_stack(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        JAN_ROOT=str(tmp_path / "root"),
        JAN_CATALOG_PORT=str(free_port()),
        JAN_DOWNLOADER_PORT=str(free_port()),
        JAN_RUNNER_PORT=str(free_port()),
        JAN_GATEWAY_PORT=str(free_port()),
    )
    up = subprocess.run(
        [sys.executable, "-m", "cli.stack", "up"], env=env, capture_output=True, text=True, timeout=90
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{env['JAN_GATEWAY_PORT']}"
        assert url in up.stdout
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert len(httpx.get(f"{url}/v1/models").json()["data"]) >= 5
        pid_files = sorted((tmp_path / "root" / "run").glob("*.pid"))
        assert [p.stem for p in pid_files] == ["controlplane", "gateway", "runner"]
        pids = [int(p.read_text()) for p in pid_files]
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "cli.stack", "down"], env=env, capture_output=True, timeout=60
        )
    assert down.returncode == 0
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"

"""A model folder that cannot be written: read-only, or full. Every write (update, delete, create,
download) fails with a clear error in the one error shape, and nothing is lost: the model object and its
binary stay as they were, still listed, and writes work again once the folder does.

Read-only: a non-root user gets it from chmod; root ignores permission bits, so as root the folder is a
small tmpfs remounted read-only. Full: a small tmpfs filled up. Both mounts need root with
CAP_SYS_ADMIN (true in our CI containers); where mounting is not allowed the tests skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fakes.hub import FakeHub, Faults
from tests.faults.conftest import write_tiny_model
from tests.harness import wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
MODEL = "box/m"
ERROR_KEYS = {"message", "type", "param", "code"}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a size-limited filesystem needs a tmpfs mount, which needs root")
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({getattr(exc, 'stderr', exc)!s}".strip() + ")")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)


def assert_clear_error(resp: httpx.Response, statuses: tuple[int, ...]) -> dict:
    assert resp.status_code in statuses, resp.text
    error = resp.json()["error"]
    assert set(error) == ERROR_KEYS and error["code"] and error["code"] != "internal_error", error
    return error


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_nothing_lost(stack, folder: Path, before: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    assert snapshot(folder) == before
    model = httpx.get(f"{stack.url}/v1/models/{MODEL}").json()
    assert model["state"] == "stopped" and model["description"] == "before", model
    assert MODEL in [m["id"] for m in httpx.get(f"{stack.url}/v1/models").json()["data"]]


def _write_model(root: Path, hub: FakeHub) -> Path:
    folder = root / "models" / "box"
    write_tiny_model(root, MODEL)
    obj = orjson.loads((folder / "m.json").read_bytes())
    (folder / "m.json").write_bytes(orjson.dumps({**obj, "description": "before"}))
    # A second object in the folder whose binary is still to be downloaded.
    url = f"{hub.url}/org/r-GGUF/resolve/main/d.Q4_K_M.gguf"
    (folder / "d.json").write_bytes(orjson.dumps({"source_url": url}))
    return folder


def _writes_fail_clearly(stack, imports: Path, *, delete: bool) -> None:  # type: ignore[no-untyped-def]
    url = stack.url
    err = assert_clear_error(
        httpx.patch(f"{url}/v1/models/{MODEL}", json={"description": "after"}), (403, 409, 429, 503, 507)
    )
    assert "storage" in err["message"] and "/" not in err["message"], err  # clear, and no server path
    if delete:
        assert_clear_error(httpx.delete(f"{url}/v1/models/{MODEL}"), (403, 409, 429, 503, 507))
    new = {"source_url": str(imports / "new.gguf"), "id": "box/new", "import_mode": "copy"}
    assert_clear_error(httpx.post(f"{url}/v1/models", json=new), (403, 409, 429, 503, 507))


def test_a_read_only_model_folder_gives_clear_errors_and_loses_nothing(
    make_stack, tmp_path: Path, hub: FakeHub
) -> None:
    root = tmp_path / "jan"
    folder = root / "models" / "box"
    hub.add_repo("org/r-GGUF", {"d.Q4_K_M.gguf": (2 * MiB, 3)})
    with contextlib.ExitStack() as mounts:
        as_root = os.geteuid() == 0
        if as_root:
            mounts.enter_context(tmpfs(folder, 16 * MiB))
        _write_model(root, hub)
        write_tiny_model(tmp_path, "imports/new")  # a file to import, outside JAN_ROOT
        imports = tmp_path / "models" / "imports"
        stack = make_stack(
            root, JAN_IMPORT_ALLOWED_DIRS=str(imports), JAN_ALLOW_PRIVATE_NETWORKS="true", HF_ENDPOINT=hub.url
        )
        wait_for(lambda: httpx.get(f"{stack.url}/v1/models/{MODEL}").status_code == 200)
        before = snapshot(folder)
        if as_root:
            _mount("-o", "remount,ro", str(folder))
        else:
            folder.chmod(0o555)
        try:
            _writes_fail_clearly(stack, imports, delete=True)
            # A download into it fails as a job, with the reason, and leaves no partial file behind.
            resp = httpx.post(f"{stack.url}/v1/models/box/d/download")
            if resp.status_code == 202:
                job = wait_for(lambda: _ended(stack, "box/d"), timeout=30)
                assert job["phase"] == "failed" and job["error"] and job["error_code"], job
            else:
                assert_clear_error(resp, (403, 409, 429, 503, 507))
            assert httpx.get(f"{stack.url}/v1/models/box/d/state").json()["state"] == "not-downloaded"
            assert_nothing_lost(stack, folder, before)
        finally:
            if as_root:
                _mount("-o", "remount,rw", str(folder))
            else:
                folder.chmod(0o755)
        # Writable again: the same update works.
        resp = httpx.patch(f"{stack.url}/v1/models/{MODEL}", json={"description": "after"})
        assert resp.status_code == 200 and resp.json()["description"] == "after", resp.text
        stack.stop()


def test_a_full_model_folder_gives_clear_errors_and_loses_nothing(
    make_stack, tmp_path: Path, hub: FakeHub
) -> None:
    root = tmp_path / "jan"
    folder = root / "models" / "box"
    hub.add_repo("org/r-GGUF", {"d.Q4_K_M.gguf": (4 * MiB, 3)})
    with tmpfs(folder, 4 * MiB):
        _write_model(root, hub)
        write_tiny_model(tmp_path, "imports/new")
        imports = tmp_path / "models" / "imports"
        stack = make_stack(
            root, JAN_IMPORT_ALLOWED_DIRS=str(imports), JAN_ALLOW_PRIVATE_NETWORKS="true", HF_ENDPOINT=hub.url
        )
        wait_for(lambda: httpx.get(f"{stack.url}/v1/models/{MODEL}").status_code == 200)
        before = snapshot(folder)
        filler = folder / ".filler"  # hidden: not a model, not a binary
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        try:
            # (Deleting needs no space, so it works on a full disk: not tried here, the model must stay.)
            _writes_fail_clearly(stack, imports, delete=False)
            # The download is refused before it starts: the space it needs is not there.
            err = assert_clear_error(httpx.post(f"{stack.url}/v1/models/box/d/download"), (429, 507))
            assert err["code"] == "insufficient_space", err
            # A source that does not say its size gets past that check and fills the disk mid-way: the
            # job fails with the reason, and the partial file does not stay behind.
            hub.faults["org/r-GGUF/d.Q4_K_M.gguf"] = Faults(no_length=True)
            resp = httpx.post(f"{stack.url}/v1/models/box/d/download")
            if resp.status_code == 202:
                job = wait_for(lambda: _ended(stack, "box/d"), timeout=30)
                assert job["phase"] == "failed" and job["error"] and job["error_code"], job
            else:
                assert_clear_error(resp, (429, 507))
            assert httpx.get(f"{stack.url}/v1/models/box/d/state").json()["state"] == "not-downloaded"
            filler.unlink()
            assert_nothing_lost(stack, folder, before)
        finally:
            filler.unlink(missing_ok=True)
        resp = httpx.patch(f"{stack.url}/v1/models/{MODEL}", json={"description": "after"})
        assert resp.status_code == 200 and resp.json()["description"] == "after", resp.text
        stack.stop()


def _ended(stack, model_id: str) -> dict:  # type: ignore[no-untyped-def]
    resp = httpx.get(f"{stack.url}/v1/models/{model_id}/download", headers={"accept": "application/json"})
    job = resp.json() if resp.status_code == 200 else {}
    return job if job.get("phase") in ("done", "failed", "cancelled") else {}

"""`GET /v1/events` through the real processes: a json file written by hand shows up as an `added`
event, an edit as `updated`, a removal as `removed`, each with the model as the API shows it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from cli.stack import Stack

pytestmark = pytest.mark.e2e


def test_hand_edits_stream_as_model_events(stack: Stack) -> None:
    folder = stack.root / "models" / "evented"
    seen: list[tuple[str, dict]] = []

    live = threading.Event()

    def edit() -> None:
        # The catalog subscribes a moment after the response starts: touch a probe file until its event
        # arrives, so the edits below all happen while the stream is live.
        probe = stack.root / "models" / "probe"
        probe.mkdir(parents=True)
        n = 0
        while not live.wait(0.3):
            n += 1
            (probe / "p.json").write_text(json.dumps({"name": f"probe {n}"}))
        folder.mkdir(parents=True)
        (folder / "m.json").write_text(json.dumps({"source_url": "https://example.invalid/m.gguf"}))
        time.sleep(0.5)
        (folder / "m.json").write_text(
            json.dumps({"source_url": "https://example.invalid/m.gguf", "name": "M"})
        )
        time.sleep(0.5)
        (folder / "m.json").unlink()

    threading.Thread(target=edit, daemon=True).start()
    with httpx.stream("GET", f"{stack.url}/v1/events", timeout=20) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if data["id"] == "probe/p":
                    live.set()
                if data["id"] == "evented/m":
                    seen.append((event, data))
                if data["type"] == "removed" and data["id"] == "evented/m":
                    break
    kinds = [d["type"] for _, d in seen]
    assert kinds[0] == "added" and "updated" in kinds and kinds[-1] == "removed", kinds
    assert all(event == "model" for event, _ in seen)
    named = next(d for _, d in seen if d["type"] == "updated" and d["model"]["name"] == "M")
    assert named["model"]["id"] == "evented/m" and named["model"]["state"] == "not-downloaded"
    assert seen[-1][1]["model"] is None

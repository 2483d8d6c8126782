"""The compose stack's scenario, driven from the host through the gateway only (scripts/ci/compose-e2e.sh):
waits for /healthz with `--runners` runners, lists models, imports a GGUF by URL with that many replicas,
downloads it (into the bucket), starts it (a replica on each runner), streams a chat with the official
openai SDK, sends concurrent chats that the gateway spreads over the replicas (X-Jan-Runner), stops it.
Then, with `--local-file`, the same GGUF from the host's disk through `jan models import` (the containers
cannot read the path: the CLI uploads it, the catalog puts it into the bucket), started and asked once.
Exits non-zero on the first failure."""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

MODEL_ID = "gemma-3-270m-ci/gemma-3-270m-Q4_K_M"
UPLOADED_ID = "gemma-3-270m-upload-ci/gemma"


def step(message: str) -> None:
    print(f"[compose-e2e] {message}", flush=True)


def wait_healthy(http: httpx.Client, timeout: float, runners: int) -> dict:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = http.get("/healthz")
            body = resp.json()
            if resp.status_code == 200 and body.get("runners", 0) >= runners:
                return body
            last = f"{resp.status_code} {body}"
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise SystemExit(f"the gateway did not become healthy with {runners} runners in {timeout:.0f} s: {last}")


def wait_download(http: httpx.Client, model_id: str, timeout: float) -> dict:
    """Until the model's download job ends; exits unless it ended `done`. (The model's state is no
    guide at the start: it stays not-downloaded, with the missing file as its reason, until the
    downloader's first report.)"""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        resp = http.get(f"/v1/models/{model_id}/download", headers={"accept": "application/json"})
        job = resp.raise_for_status().json()
        if job["phase"] == "done":
            return job
        if job["phase"] in ("failed", "cancelled"):
            raise SystemExit(f"{model_id}: download {job['phase']}: {job.get('error')}")
        time.sleep(0.5)
    raise SystemExit(f"{model_id}: the download did not end in {timeout:.0f} s: {job}")


def wait_state(http: httpx.Client, model_id: str, want: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = http.get(f"/v1/models/{model_id}/state").raise_for_status().json()
        if state["state"] == want:
            return state
        if state["state"] == "not-downloaded" and state.get("reason"):
            raise SystemExit(f"{model_id}: {state['reason']}")
        time.sleep(0.5)
    raise SystemExit(f"{model_id} is not {want} after {timeout:.0f} s: {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:1337")
    parser.add_argument("--source-url", required=True, help="where the containers can fetch the GGUF")
    parser.add_argument("--local-file", type=Path, help="a GGUF on the host, imported through the CLI")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--runners", type=int, default=1, help="runners the stack has; replicas of the model")
    args = parser.parse_args()
    t0 = time.monotonic()
    http = httpx.Client(base_url=args.url, timeout=60.0)
    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused")

    health = wait_healthy(http, args.timeout, args.runners)
    step(f"healthy after {time.monotonic() - t0:.1f} s: {health}")

    page = http.get("/", headers={"Accept": "text/html"})
    if page.status_code != 200 or "script-src 'self'" not in page.headers.get("content-security-policy", ""):
        raise SystemExit(f"the web page is not served from the image: {page.status_code} {page.headers}")
    if http.get("/ui/hub.js").status_code != 200:
        raise SystemExit("the web page's modules are not in the image")
    step("the web page and its modules are served")

    ids = [m.id for m in client.models.list()]
    if not ids:
        raise SystemExit("the catalog lists no model (the recommended ones should be seeded)")
    step(f"{len(ids)} models listed, e.g. {ids[0]}")

    if MODEL_ID in ids:  # a leftover volume (JAN_CI_KEEP): start from scratch
        http.delete(f"/v1/models/{MODEL_ID}").raise_for_status()
    resp = http.post(
        "/v1/models",
        json={
            "source_url": args.source_url,
            "id": MODEL_ID,
            "parameters": {"ctx_len": 2048, "replicas": args.runners},
        },
    )
    if resp.status_code != 201:
        raise SystemExit(f"import failed: {resp.status_code} {resp.text}")
    step(f"imported {MODEL_ID}: {resp.json()['state']}")

    http.post(f"/v1/models/{MODEL_ID}/download").raise_for_status()
    wait_download(http, MODEL_ID, args.timeout)
    wait_state(http, MODEL_ID, "stopped", args.timeout)
    step(f"downloaded into the bucket after {time.monotonic() - t0:.1f} s")

    resp = http.post(f"/v1/models/{MODEL_ID}/start", timeout=args.timeout)
    if resp.status_code != 200 or resp.json().get("state") != "running":
        raise SystemExit(f"start failed: {resp.status_code} {resp.text}")
    state = http.get(f"/v1/models/{MODEL_ID}/state").json()
    if len(state["runners"]) != args.runners or state["replicas_wanted"] != args.runners:
        raise SystemExit(f"{args.runners} replicas wanted, on distinct runners: {state}")
    step(f"running on {', '.join(state['runners'])}")

    pieces: list[str] = []
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    text = "".join(pieces)
    if not text.strip():
        raise SystemExit(f"the stream produced no text ({len(pieces)} chunks)")
    step(f"streamed {len(pieces)} chunks: {text.strip()[:80]!r}")

    if args.runners > 1:
        spread(http, args.runners)

    http.post(f"/v1/models/{MODEL_ID}/stop").raise_for_status()
    wait_state(http, MODEL_ID, "stopped", 30)
    step(f"stopped after {time.monotonic() - t0:.1f} s")

    if args.local_file is not None:
        upload(http, client, args.url, args.local_file, args.timeout)
    step(f"scenario done in {time.monotonic() - t0:.1f} s")


def spread(http: httpx.Client, runners: int) -> None:
    """Concurrent chats, each answered by one of the replicas: together by all of them."""

    def chat(i: int) -> str:
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": f"Count to {i}."}],
            "max_tokens": 16,
        }
        resp = http.post("/v1/chat/completions", json=body, timeout=300)
        if resp.status_code != 200:
            raise SystemExit(f"chat {i} failed: {resp.status_code} {resp.text}")
        return resp.headers["x-jan-runner"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=2 * runners) as pool:
        served = list(pool.map(chat, range(2 * runners)))
    if len(set(served)) != runners:
        raise SystemExit(f"{2 * runners} concurrent chats were not spread over {runners} replicas: {served}")
    step(f"{len(served)} concurrent chats served by {sorted(set(served))}")


def upload(http: httpx.Client, client: OpenAI, url: str, file: Path, timeout: float) -> None:
    if http.get(f"/v1/models/{UPLOADED_ID}").status_code == 200:  # a leftover volume: start from scratch
        http.delete(f"/v1/models/{UPLOADED_ID}").raise_for_status()
    t = time.monotonic()
    jan = Path(sys.executable).parent / "jan"
    done = subprocess.run(
        [str(jan), "--url", url, "models", "import", str(file.resolve()), "--id", UPLOADED_ID],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0 or "uploading it" not in done.stderr:
        raise SystemExit(f"jan models import: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    state = http.get(f"/v1/models/{UPLOADED_ID}/state").json()
    if state.get("state") != "stopped":
        raise SystemExit(f"the uploaded model is not downloaded: {state}")
    step(f"uploaded {file.name} from the host through the CLI in {time.monotonic() - t:.1f} s")
    answer = client.chat.completions.create(
        model=UPLOADED_ID,  # started just in time, from the runner's copy of the bucket object
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        temperature=0,
    )
    if not (answer.choices[0].message.content or "").strip():
        raise SystemExit("the uploaded model answered nothing")
    step(f"the uploaded model answered: {answer.choices[0].message.content.strip()[:60]!r}")
    http.post(f"/v1/models/{UPLOADED_ID}/stop").raise_for_status()


if __name__ == "__main__":
    sys.exit(main())

"""Local mode as `make up` runs it (`python -m cli.stack up`): several runners, a supervisor that brings a
crashed service back, ports recorded in JAN_ROOT/run/stack.json so stacks of different JAN_ROOTs run side
by side, one clear line when the gateway's port is taken, and `down` leaving no process behind. With three
runners, a model of three replicas (the tiny GGUF on llama.cpp): one on each runner, requests spread,
conversations kept on their replica, a killed runner taking its replica again, and a kill -9 under load
failing no request that had not begun to answer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from cli.stack import free_port
from cli.supervisor import Backoff
from jan.catalog.v1 import catalog_service_pb2 as pb
from jan.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from tests.harness import TINY_CHAT, wait_for, write_tiny_chat_model

pytestmark = pytest.mark.e2e

PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def stack_env(root: Path, **more: str) -> dict[str, str]:
    """The caller's environment without anything that would choose ports or runners for the stack."""
    env = {k: v for k, v in os.environ.items() if k not in PROXIES and not k.endswith("_PORT")}
    env.pop("JAN_LOCAL_RUNNERS", None)
    env.update(
        JAN_ROOT=str(root),
        JAN_GATEWAY_PORT=str(free_port()),
        JAN_CATALOG_SEED_MODELS_DIR="",
        JAN_RUNNER_THREADS="1",
        JAN_CATALOG_REPORT_TTL_S="3",  # heartbeats every 0.75 s
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(more)
    return env


def stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.stack", command], env=env, capture_output=True, text=True, timeout=120
    )


def record(env: dict[str, str]) -> dict[str, Any]:
    return json.loads((Path(env["JAN_ROOT"]) / "run" / "stack.json").read_text())  # type: ignore[no-any-return]


def pid(env: dict[str, str], name: str) -> int:
    return int((Path(env["JAN_ROOT"]) / "run" / f"{name}.pid").read_text())


def runners(env: dict[str, str]) -> dict[str, pb.Runner]:
    address = f"127.0.0.1:{record(env)['services']['catalog']['port']}"
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        reply = pb_grpc.CatalogServiceStub(channel).ListRunners(pb.ListRunnersRequest(), timeout=5)
    return {r.name: r for r in reply.runners}


def processes_of(root: Path) -> list[int]:
    """Every live process started with this JAN_ROOT in its environment (the supervisor and its services)."""
    mark = f"JAN_ROOT={root}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if mark in environ and state != "Z":
            found.append(int(proc.name))
    return found


def url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['JAN_GATEWAY_PORT']}"


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = stack_env(tmp_path_factory.mktemp("jan3"), JAN_LOCAL_RUNNERS="3")
    root = Path(env["JAN_ROOT"])
    write_tiny_chat_model(root)
    model_file = root / "models" / "tiny" / "chat.json"
    model = json.loads(model_file.read_text())
    model["parameters"]["replicas"] = 3
    model_file.write_text(json.dumps(model))
    up = stack("up", env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{env['JAN_GATEWAY_PORT']}" in up.stdout
        yield env
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stderr
    assert processes_of(Path(env["JAN_ROOT"])) == []  # the restarted runner included


def test_three_runners_register_each_on_its_own_ports(three: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{three['JAN_GATEWAY_PORT']}"
    assert httpx.get(f"{url}/healthz", trust_env=False).json()["runners"] == 3
    services = record(three)["services"]
    assert list(services) == ["catalog", "downloader", "runner-1", "runner-2", "runner-3", "gateway"]
    assert [s["process"] for s in services.values()] == [
        *["controlplane"] * 2,
        *["runner-1", "runner-2", "runner-3"],
        "gateway",
    ]
    ports = [s["port"] for s in services.values()] + [
        s["metrics_port"] for s in services.values() if "metrics_port" in s
    ]
    assert len(set(ports)) == len(ports) == 11
    registered = runners(three)
    assert {name: r.address for name, r in registered.items()} == {
        name: f"127.0.0.1:{services[name]['port']}" for name in ("runner-1", "runner-2", "runner-3")
    }
    metrics = httpx.get(f"http://127.0.0.1:{services['runner-3']['metrics_port']}/metrics", trust_env=False)
    assert metrics.status_code == 200


def replicas_of(env: dict[str, str]) -> list[str]:
    running = httpx.get(f"{url(env)}/v1/running", trust_env=False).json()["data"]
    return sorted(r["runner"] for r in running if r["model_id"] == TINY_CHAT)


def test_replicas_are_placed_on_three_runners(three: dict[str, str]) -> None:
    started = httpx.post(f"{url(three)}/v1/models/{TINY_CHAT}/start", trust_env=False, timeout=120)
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "running"
    assert replicas_of(three) == ["runner-1", "runner-2", "runner-3"]
    state = httpx.get(f"{url(three)}/v1/models/{TINY_CHAT}/state", trust_env=False).json()
    assert state["runners"] == ["runner-1", "runner-2", "runner-3"]
    assert (state["replicas_wanted"], state["reason"]) == (3, "")
    chat = {"model": TINY_CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = httpx.post(f"{url(three)}/v1/chat/completions", json=chat, trust_env=False, timeout=60)
    assert answer.status_code == 200 and answer.headers["x-jan-runner"] in state["runners"]
    metrics = httpx.get(f"{url(three)}/metrics", trust_env=False).text
    assert f'jan_gateway_model_replicas{{model="{TINY_CHAT}"}} 3.0' in metrics
    assert f'jan_gateway_model_outstanding_requests{{model="{TINY_CHAT}"}} 0.0' in metrics


async def test_requests_spread_and_conversations_stay_on_their_replica(three: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=url(three), trust_env=False, timeout=120) as http:

        async def conversation(i: int) -> list[str]:
            messages = [{"role": "user", "content": f"conversation {i}"}]
            served = []
            for turn in range(3):
                body = {"model": TINY_CHAT, "messages": messages, "max_tokens": 6}
                answer = await http.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                served.append(answer.headers["x-jan-runner"])
                reply = answer.json()["choices"][0]["message"]["content"]
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": f"turn {turn}"},
                ]
            return served

        served = await asyncio.gather(*(conversation(i) for i in range(6)))
    assert all(len(set(s)) == 1 for s in served), served  # every turn on the replica of the first
    assert {s[0] for s in served} == {"runner-1", "runner-2", "runner-3"}, served  # spread


async def test_a_kill_9_under_load_fails_no_request_that_had_not_begun(three: dict[str, str]) -> None:
    outcomes: list[tuple[bool, bool, str]] = []  # (began answering before the kill, ended well, runner)
    killed = asyncio.Event()
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url(three), trust_env=False, timeout=120) as http:

        async def request(i: int) -> None:
            body = {
                "model": TINY_CHAT,
                "messages": [{"role": "user", "content": f"load {i}"}],
                "max_tokens": 64,
                "stream": True,
            }
            began_before_kill, ok, runner = False, False, ""
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                    runner = resp.headers.get("x-jan-runner", "")
                    # The gateway sends its headers only after the runner's first message, so an answer from
                    # runner-3 began before the kill even when this task only sees it after killed.set().
                    began_before_kill = resp.status_code == 200 and (
                        not killed.is_set() or runner == "runner-3"
                    )
                    lines = [line async for line in resp.aiter_lines() if line]
                    ok = resp.status_code == 200 and lines[-1] == "data: [DONE]"
                    ok = ok and not any('"error"' in line for line in lines)
            except httpx.HTTPError:
                pass
            outcomes.append((began_before_kill, ok, runner))

        async def client(c: int) -> None:
            i = 0
            while not stop.is_set():
                await request(100 * c + i)
                i += 1

        clients = [asyncio.create_task(client(c)) for c in range(9)]
        await asyncio.sleep(1.5)
        os.kill(pid(three, "runner-3"), signal.SIGKILL)
        killed.set()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*clients)
    before = [o for o in outcomes if o[0]]
    assert sum(1 for o in before if o[2] == "runner-3") >= 3, outcomes  # it did serve, before the kill
    after = [o for o in outcomes if not o[0]]
    assert after and all(ok for _, ok, _ in after), outcomes  # retried on a live replica when need be
    failed = [o for o in outcomes if not o[1]]
    assert all(runner == "runner-3" for _, _, runner in failed), outcomes  # only streams it had begun


def test_a_killed_runner_comes_back_and_takes_its_replica_again(three: dict[str, str]) -> None:
    # Killed by the test before (or now, when run alone): the supervisor restarts it, and the catalog hands
    # it the replica the model is short of in the answer to its first heartbeat.
    wait_for(lambda: replicas_of(three) == ["runner-1", "runner-2", "runner-3"], timeout=60)
    state = httpx.get(f"{url(three)}/v1/models/{TINY_CHAT}/state", trust_env=False).json()
    assert state["runners"] == ["runner-1", "runner-2", "runner-3"] and state["reason"] == ""


async def test_sigterm_lets_a_stream_finish_and_new_requests_go_elsewhere(three: dict[str, str]) -> None:
    wait_for(lambda: replicas_of(three) == ["runner-1", "runner-2", "runner-3"], timeout=60)
    body = {
        "model": TINY_CHAT,
        "messages": [{"role": "user", "content": "a long one"}],
        "max_tokens": 400,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=url(three), trust_env=False, timeout=120) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            draining = resp.headers["x-jan-runner"]
            lines = resp.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            os.kill(pid(three, draining), signal.SIGTERM)
            chat = {
                "model": TINY_CHAT,
                "messages": [{"role": "user", "content": "meanwhile"}],
                "max_tokens": 2,
            }
            others = [await http.post("/v1/chat/completions", json=chat) for _ in range(3)]
            rest = [line async for line in lines if line]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest), rest[-3:]
    assert all(o.status_code == 200 and o.headers["x-jan-runner"] != draining for o in others)


def test_a_killed_runner_comes_back_and_registers_again(three: dict[str, str]) -> None:
    before = pid(three, "runner-2")
    os.kill(before, signal.SIGKILL)
    killed_at = time.time()
    after = wait_for(lambda: pid(three, "runner-2") != before and pid(three, "runner-2"), timeout=15)
    log = (Path(three["JAN_ROOT"]) / "logs" / "supervisor.log").read_text()
    assert "runner-2 exited with status -9 (SIGKILL); restarting in 0.5 s" in log
    assert f"runner-2 restarted (pid {after})" in log
    # A heartbeat after the kill can only come from the new process.
    wait_for(lambda: runners(three)["runner-2"].last_seen > killed_at + 0.5, timeout=15)
    assert Path(f"/proc/{after}").exists()
    assert set(runners(three)) == {"runner-1", "runner-2", "runner-3"}


def test_the_control_plane_serves_both_services_and_comes_back_after_a_kill_9(three: dict[str, str]) -> None:
    services = record(three)["services"]
    before = pid(three, "controlplane")
    assert b"services.controlplane" in Path(f"/proc/{before}/cmdline").read_bytes()
    for name in ("catalog", "downloader"):  # each its own metrics port, the process's metrics on both
        metrics = httpx.get(f"http://127.0.0.1:{services[name]['metrics_port']}/metrics", trust_env=False)
        assert "jan_downloader_bytes_total" in metrics.text
        assert 'service="jan.catalog.v1.CatalogService"' in metrics.text
    os.kill(before, signal.SIGKILL)
    after = wait_for(lambda: pid(three, "controlplane") != before and pid(three, "controlplane"), timeout=15)
    log = (Path(three["JAN_ROOT"]) / "logs" / "supervisor.log").read_text()
    assert "controlplane exited with status -9 (SIGKILL); restarting in 0.5 s" in log
    health = wait_for(
        lambda: (h := httpx.get(f"{url(three)}/healthz", trust_env=False)).status_code == 200 and h.json(),
        timeout=15,
    )
    assert health["services"]["catalog"] and health["services"]["downloader"]
    # The new catalog learns the runners again from their next heartbeats.
    wait_for(lambda: set(runners(three)) == {"runner-1", "runner-2", "runner-3"}, timeout=15)
    listed = httpx.get(f"{url(three)}/v1/downloads", trust_env=False)
    assert listed.status_code == 200, listed.text
    assert Path(f"/proc/{after}").exists()


def test_a_taken_port_stops_up_with_one_line_naming_its_variable(
    three: dict[str, str], tmp_path: Path
) -> None:
    taken = {
        "JAN_GATEWAY_PORT": three["JAN_GATEWAY_PORT"],
        "JAN_CATALOG_PORT": str(record(three)["services"]["catalog"]["port"]),
    }
    for variable, port in taken.items():
        env = stack_env(tmp_path / variable, **{variable: port})
        up = stack("up", env)
        assert up.returncode != 0
        assert up.stderr.strip() == f"port {port} ({variable}) is in use: set {variable} to a free port"
        assert processes_of(tmp_path / variable) == []


def test_a_second_root_runs_beside_and_down_leaves_no_process(three: dict[str, str], tmp_path: Path) -> None:
    env = stack_env(tmp_path / "other")
    up = stack("up", env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        first = {s["port"] for s in record(three)["services"].values()}
        second = record(env)
        assert first.isdisjoint(s["port"] for s in second["services"].values())
        assert set(runners(env)) == {"local"}  # one runner keeps the name it always had
        started = processes_of(tmp_path / "other")
        # The supervisor, the control plane (the catalog and the downloader), the runner and the gateway.
        assert second["supervisor"] in started and len(started) == 4
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stderr
    time.sleep(1.0)  # long enough for a (wrong) restart after down to show
    assert processes_of(tmp_path / "other") == []
    assert not (tmp_path / "other" / "run" / "stack.json").exists()
    assert (
        httpx.get(f"http://127.0.0.1:{three['JAN_GATEWAY_PORT']}/healthz", trust_env=False).status_code == 200
    )


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, cap=4.0, stable_s=60.0)
    assert [backoff.delay("runner-1", 1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay("runner-2", 1.0) == 0.5  # per service
    assert backoff.delay("runner-1", 61.0) == 0.5

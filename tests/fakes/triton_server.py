"""A real Triton Inference Server (the `tritonserver` binary shipped by nvidia-pytriton, CPU only) on free
loopback ports, hosting tests/fakes/triton: a Python-backend model with the interface of TensorRT-LLM's
`ensemble` model that runs the tiny GGUF through llama-cpp-python, so real tokens flow through Triton:
`llm` (the current ensemble's interface: guided decoding, log-probs) and `llm_basic` (an older one
without them), both served by llm/1/model.py.

`triton_server(tmp_dir)` is a context manager yielding a `TritonServer` (gRPC and HTTP addresses). The
server runs with explicit model control and loads nothing at start: loading is the runner's job.
Raises `TritonMissing` when nvidia-pytriton is not installed (fixtures turn that into a skip).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.stack import free_port
from tests.fakes.tiny_gguf import write_tiny_gguf

MODEL_NAME = "llm"
BASIC_MODEL_NAME = "llm_basic"
REPOSITORY = Path(__file__).parent / "triton"


class TritonMissing(RuntimeError):
    """nvidia-pytriton (which ships tritonserver) is not installed."""


@dataclass(frozen=True)
class TritonServer:
    grpc_address: str  # host:port
    http_port: int
    repository: Path
    log: Path

    def source_url(self, model: str = MODEL_NAME) -> str:
        return f"triton://{self.grpc_address}/{model}"


def _ready(port: int) -> bool:
    # http.client ignores proxy variables: this only ever reaches loopback.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise TritonMissing("nvidia-pytriton is not installed (it ships the tritonserver binary)") from None
    home = Path(pytriton.__file__).parent / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise TritonMissing(f"{home}/bin/tritonserver is missing")
    return home


def prepare(workdir: Path) -> tuple[Path, Path, dict[str, str]]:
    """(backend dir, model repository, environment) for a server under `workdir`."""
    home = _pytriton_dir()
    backends = workdir / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(home / "backends" / "python" / name, python_backend / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # The stub must sit in <backends>/python/, or the backend looks for it elsewhere and fails.
    shutil.copy2(home / "python_backend_stubs" / version / "triton_python_backend_stub", python_backend)
    repository = workdir / "models"
    shutil.copytree(REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    # Every model runs the one Python model file; their configs decide the interface each one shows.
    for config in repository.glob("*/config.pbtxt"):
        version = config.parent / "1"
        version.mkdir(exist_ok=True)
        if not (version / "model.py").exists():
            shutil.copy2(repository / MODEL_NAME / "1" / "model.py", version / "model.py")
        write_tiny_gguf(version / "model.gguf")
    libs = [str(sysconfig.get_config_var("LIBDIR") or ""), str(home.parent.parent / "nvidia_pytriton.libs")]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    # The Python models run with the first python3 on PATH: this venv's, which has llama-cpp-python.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return backends, repository, env


@contextlib.contextmanager
def triton_server(workdir: Path | None = None, *, timeout: float = 60.0) -> Iterator[TritonServer]:
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="triton-")) if workdir is None else workdir
    backends, repository, env = prepare(work)
    binary = _pytriton_dir() / "bin" / "tritonserver"
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log_path = work / "tritonserver.log"
    log = open(log_path, "wb")  # closed below, after the process ends
    proc = subprocess.Popen(
        [
            str(binary),
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics_port}",
            "--exit-timeout-secs=2",
            "--log-verbose=0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _ready(http_port):
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {proc.returncode}: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver was not ready within {timeout:.0f} s: {_tail(log_path)}")
            time.sleep(0.1)
        yield TritonServer(f"127.0.0.1:{grpc_port}", http_port, repository, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _tail(path: Path, n: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_bytes()[-n:].decode(errors="replace")
    return ""

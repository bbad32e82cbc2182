"""Fixtures: a real redis-server and a real memcuda-agent (built from this
checkout unless MEMCUDA_BIN_DIR points at built binaries)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))


def c_or_python(module: Any, attr: str, name: str) -> Any:
    """A fixture, called name, that runs a test once with each path there
    is for module.attr, a function of the optional C module: "c" where it
    was built, and "python" with the attribute set to None (the
    pure-Python path)."""
    params = ["python"] + (["c"] if getattr(module, attr) is not None else [])

    @pytest.fixture(params=params, name=name)
    def path(request: pytest.FixtureRequest) -> Iterator[str]:
        with python_path(module, attr, request.param == "python"):
            yield request.param

    return path


@contextlib.contextmanager
def python_path(module: Any, attr: str, on: bool) -> Iterator[None]:
    """With on, module.attr (a function of the optional C module) is None
    inside the block: the pure-Python path runs."""
    saved = getattr(module, attr)
    if on:
        setattr(module, attr, None)
    try:
        yield
    finally:
        setattr(module, attr, saved)


def eventually(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Waits for cond to hold, failing the test with what when it never does."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        time.sleep(0.01)


def child_pythonpath() -> str:
    """PYTHONPATH for a child interpreter: this package first, then whatever
    path the tests run with (packages carried beside the interpreter's own)."""
    pkg = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return pkg + (os.pathsep + rest if rest else "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("MEMCUDA_BIN_DIR"):
        return Path(os.environ["MEMCUDA_BIN_DIR"])
    out = tmp_path_factory.mktemp("bin")
    subprocess.run(["go", "build", "-o", str(out), "./cmd/..."], cwd=ROOT, check=True)
    return out


@dataclass
class Agent:
    socket: str
    redis_url: str
    prefix: str
    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)  # the agent's command line
    mode: str = "host"
    logs: list[Path] = field(default_factory=list)  # every instance's log, oldest first

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def launch(self) -> None:
        """Starts another instance with the same flags (socket, prefix)."""
        self.log = self.log.parent / f"agent-{len(self.logs)}.log"
        self.logs.append(self.log)
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(self.args, stdout=f, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.time() + 20
        while b"registry reconciled" not in self.log.read_bytes():
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail("agent did not start:\n" + self.log.read_text())
            time.sleep(0.02)

    def restart(self) -> None:
        """Stops this instance (SIGTERM) if it runs and starts the next."""
        if self.proc.poll() is None:
            self.stop()
        self.launch()
        self.wait_ready()


def shm_scope(prefix: str) -> str:
    """The host backend's tag of a registry prefix in object names (FNV-1a 32)."""
    h = 0x811C9DC5
    for b in prefix.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def remove_shm(prefix: str) -> None:
    scope = shm_scope(prefix)
    for p in [*Path("/dev/shm").glob(f"memcuda.{scope}.*"), Path(f"/dev/shm/memcuda-lock.{scope}")]:
        try:
            p.unlink()
        except OSError:
            pass


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not exe:
        pytest.fail("redis-server not found (CI installs it; or set REDIS_SERVER)")
    d = tmp_path_factory.mktemp("redis")
    port = _free_port()
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
                          "--appendonly", "no", "--logfile", str(d / "redis.log")])
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline:
                p.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    p.kill()
    p.wait()


def start_agent(bin_dir: Path, redis_url: str, name: str, extra: list[str]) -> Agent:
    d = Path(tempfile.mkdtemp(prefix="memcuda-py-"))
    sock = str(d / "agent.sock")
    prefix = f"py-{os.getpid()}-{name}:"
    args = [str(bin_dir / "memcuda-agent"), "--redis-url", redis_url, "--redis-prefix", prefix,
            "--socket", sock, "--metrics-addr", "", "--gc-interval", "200ms", "--log-level", "debug", *extra]
    a = Agent(sock, redis_url, prefix, None, d / "agent.log", args)  # type: ignore[arg-type]
    a.launch()
    a.wait_ready()
    os.environ["MEMCUDA_SOCKET"] = sock
    return a


def _finish(a: Agent, request: pytest.FixtureRequest) -> None:
    a.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for log in a.logs:
            print(f"--- {log.name}")
            print(log.read_text())
    shutil.rmtree(a.log.parent, ignore_errors=True)
    remove_shm(a.prefix)


@pytest.fixture
def agent(bin_dir: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Agent]:
    """An agent on the host backend."""
    marker = request.node.get_closest_marker("agent_args")
    a = start_agent(bin_dir, redis_url, request.node.name, ["--backend", "host", *(marker.args if marker else [])])
    yield a
    _finish(a, request)


@pytest.fixture(params=["vmm", "legacy"])
def gpu_agent(bin_dir: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Agent]:
    """An agent on each GPU backend (tests using it skip without a GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError
    except ImportError:
        pytest.skip("needs PyTorch with a CUDA GPU")
    name = request.node.name.replace("[", "-").replace("]", "")
    marker = request.node.get_closest_marker("agent_args")
    a = start_agent(bin_dir, redis_url, name, ["--backend", request.param, *(marker.args if marker else [])])
    a.mode = request.param
    yield a
    _finish(a, request)


@pytest.fixture(scope="session")
def new_pid_namespace() -> list[str]:
    """The command prefix that runs a process as a pod does: in a PID
    namespace of its own, with a /proc mounted for it. (Plain `unshare
    --pid` keeps the outer /proc, where /proc/self names the process by its
    outer pid while getpid() says 1; the driver's cuInit fails there with
    CUDA_ERROR_OPERATING_SYSTEM on the lent GPU machines.) Skips the test
    where it cannot run: it needs root."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc"]
    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run([*cmd, "true"], capture_output=True).returncode != 0:
        pytest.skip(f"needs root and {' '.join(cmd)}")
    return cmd


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "agent_args(*args): extra memcuda-agent flags")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU with PyTorch")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)

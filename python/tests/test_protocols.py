"""The array protocols, DLPack and pickling on the host backend, with what
users reach for first: NumPy, JAX (and PyTorch where installed)."""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memcuda
from conftest import child_pythonpath, eventually
from memcuda import _dlpack


def test_np_asarray_is_a_zero_copy_view_that_keeps_the_reference(agent) -> None:
    with memcuda.connect() as c:
        t = c.create("p.np", (2, 3), "f32")
        a = np.asarray(t)
        assert a.shape == (2, 3) and a.dtype == np.float32 and a.base is t
        a[:] = np.arange(6).reshape(2, 3)
        assert np.array_equal(t.numpy(), np.arange(6).reshape(2, 3)), "np.asarray must view the shared memory"
        del t
        gc.collect()
        assert c.stat("p.np").refcount == 2, "the view keeps the reference alive"
        assert a[1, 2] == 5
        del a
        gc.collect()
        c.flush()
        assert c.stat("p.np").refcount == 1


def test_np_array_honours_copy_and_dtype(agent) -> None:
    with memcuda.connect() as c, c.create("p.copy", (4,), "i32") as t:
        view = np.array(t, copy=False)
        view[:] = [1, 2, 3, 4]
        copied = np.array(t, copy=True)
        copied[0] = 99
        assert t.numpy()[0] == 1, "copy=True gives independent memory"
        assert np.array(t, dtype=np.int64).dtype == np.int64
        with pytest.raises(ValueError):  # NumPy says so itself when it reads __array_interface__
            np.array(t, dtype=np.float64, copy=False)


def test_bf16_host_tensor_through_numpy_and_jax(agent) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with memcuda.connect() as c, c.create("p.bf16", (3,), "bf16") as t:
        a = np.asarray(t)
        assert a.dtype == np.dtype(ml_dtypes.bfloat16), "np.asarray of bf16 goes through ml_dtypes"
        a[:] = np.array([1.5, -2, 3], dtype=a.dtype)
        jax = pytest.importorskip("jax")
        j = jax.dlpack.from_dlpack(t)
        assert str(j.dtype) == "bfloat16" and j.tolist() == [1.5, -2.0, 3.0]
        f8 = c.create("p.f8", (2,), "f8e4m3")
        assert np.asarray(f8).dtype == np.dtype(ml_dtypes.float8_e4m3fn)
        f8.release()


def test_dlpack_consumers_view_the_same_memory(agent) -> None:
    jax = pytest.importorskip("jax")
    with memcuda.connect() as c, c.create("p.dl", (2, 2), "f32") as t:  # f32: JAX copies f64 into f32 unless x64 is on
        a = np.from_dlpack(t)
        assert a.dtype == np.float32 and a.shape == (2, 2)
        a[0, 1] = 7.0
        assert t.numpy()[0, 1] == 7.0
        j = jax.dlpack.from_dlpack(t)
        a[1, 1] = 8.0
        assert float(j[0, 1]) == 7.0 and float(j[1, 1]) == 8.0, "JAX must view the memory, not copy it"
        assert t.__dlpack_device__() == (1, 0)


def test_dlpack_versions_copies_and_devices(agent) -> None:
    with memcuda.connect() as c, c.create("p.ver", (3,), "u8") as t:
        t.numpy()[:] = [1, 2, 3]
        assert "dltensor_versioned" in repr(t.__dlpack__(max_version=(1, 0)))
        assert "dltensor_versioned" not in repr(t.__dlpack__()), "older consumers get the unversioned capsule"
        assert "dltensor_versioned" not in repr(t.__dlpack__(max_version=(0, 8)))
        copy = np.from_dlpack(t, copy=True)
        copy[0] = 100
        assert t.numpy()[0] == 1, "copy=True exports a copy"
        with pytest.raises(BufferError):
            t.__dlpack__(dl_device=(2, 0))
        # Capsules nobody consumed give their reference back when they go.
        before = len(_dlpack._live)
        for _ in range(10):
            t.__dlpack__(max_version=(1, 0))
            t.__dlpack__()
        gc.collect()
        assert len(_dlpack._live) == before


def test_gpu_array_interfaces_are_absent_on_host_tensors(agent) -> None:
    with memcuda.connect() as c, c.create("p.host", (1,), "f32") as t:
        assert not hasattr(t, "__cuda_array_interface__")
        assert hasattr(t, "__array_interface__")


def test_released_tensor_exports_nothing(agent) -> None:
    with memcuda.connect() as c:
        t = c.create("p.rel", (1,), "f32")
        t.release()
        with pytest.raises(memcuda.FailedPrecondition):
            t.__dlpack__()
        with pytest.raises(memcuda.FailedPrecondition):
            pickle.dumps(t)


def test_pickle_by_name_in_the_same_process(agent) -> None:
    with memcuda.connect() as c, c.create("p.pk", (4,), "f32") as t:
        t.numpy()[:] = 3.0
        u = pickle.loads(pickle.dumps(t))
        assert u.name == "p.pk" and u.client is memcuda.shared_client(agent.socket)
        assert u.info.uid == t.info.uid and np.array_equal(u.numpy(), [3.0] * 4)
        u.release()


def _sum_by_name(t: Any) -> float:
    return float(t.numpy().sum())


def _write_through(t: Any) -> int:
    t.numpy()[:] = 7
    return os.getpid()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pickle_to_multiprocessing_workers(agent, method: str) -> None:
    with memcuda.connect() as c, c.create(f"p.mp.{method}", (8,), "f32") as t:
        t.numpy()[:] = np.arange(8)
        ctx = mp.get_context(method)
        with ctx.Pool(2) as pool:
            assert pool.map(_sum_by_name, [t, t]) == [28.0, 28.0]
            pid = pool.apply(_write_through, (t,))
        assert pid != os.getpid()
        assert np.all(t.numpy() == 7), "the worker wrote the same memory"
        # Each worker's connection closed with it; the agent drops its
        # references once it has read the close, which no call here waits for.
        eventually(lambda: c.stat(t.name).refcount == 2, "the workers' references went with them")


def test_pickle_of_a_redis_tensor(agent) -> None:
    with memcuda.connect() as c, c.create("p.rt", (2,), "i64") as t:
        t.numpy()[:] = [5, 6]
        c.stat("p.rt")
        rt = memcuda.open_from_redis(agent.redis_url, "p.rt", prefix=agent.prefix)
        again = pickle.loads(pickle.dumps(rt))
        assert again.numpy().tolist() == [5, 6]
        again.release()
        rt.release()


def test_torch_views_on_the_host(agent) -> None:
    torch = pytest.importorskip("torch")
    with memcuda.connect() as c, c.create("p.torch", (2, 2), "bf16") as t:
        x = torch.from_dlpack(t)
        assert x.dtype == torch.bfloat16 and x.device.type == "cpu"
        x.fill_(2.5)
        assert t.torch().sum().item() == 10.0


@pytest.fixture
def tls_redis(tmp_path: Path) -> Any:
    """A redis-server with a TLS port (and a plain one for the agent)."""
    exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not exe or not shutil.which("openssl"):
        pytest.skip("needs redis-server and openssl")
    ca, crt, key = tmp_path / "ca.crt", tmp_path / "redis.crt", tmp_path / "redis.key"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=tmp_path)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", str(ca), "-days", "1",
        "-subj", "/CN=memcuda-test-ca")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", "redis.csr", "-subj", "/CN=localhost")
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "redis.csr", "-CA", str(ca), "-CAkey", "ca.key", "-CAcreateserial", "-out", str(crt),
        "-days", "1", "-extfile", "ext")
    import socket as so

    ports = []
    for _ in range(2):
        s = so.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    proc = subprocess.Popen([exe, "--port", str(ports[0]), "--tls-port", str(ports[1]), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(crt), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
                             "--requirepass", "s3cret"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 10
    while True:
        try:
            so.create_connection(("127.0.0.1", ports[1]), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.skip("this redis-server has no TLS")
            time.sleep(0.05)
    yield {"plain": f"redis://:s3cret@127.0.0.1:{ports[0]}/0", "tls": f"rediss://:s3cret@localhost:{ports[1]}/0", "ca": str(ca)}
    proc.kill()
    proc.wait()


def test_redis_only_path_over_tls_with_a_password(bin_dir, tls_redis, request) -> None:
    from conftest import _finish, start_agent

    a = start_agent(bin_dir, tls_redis["plain"], "tls", ["--backend", "host"])
    try:
        with memcuda.connect(a.socket) as c, c.create("tls.t", (3,), "f32") as t:
            t.numpy()[:] = [1, 2, 3]
            c.stat("tls.t")
            url = tls_redis["tls"] + "?ssl_cert_reqs=required&ssl_ca_certs=" + tls_redis["ca"]
            with memcuda.open_from_redis(url, "tls.t", prefix=a.prefix) as rt:
                assert rt.numpy().tolist() == [1.0, 2.0, 3.0]
                assert c.stat("tls.t").refcount == 3, "the queue get took a reference over TLS"
            with pytest.raises(memcuda.Unavailable):
                memcuda.open_from_redis(tls_redis["tls"].replace("s3cret", "wrong"), "tls.t", prefix=a.prefix, timeout=2)
    finally:
        _finish(a, request)


def test_redis_only_path_without_redis_py_says_what_to_install(agent, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['redis'] = None; import memcuda\n"
            "try:\n    memcuda.open_from_redis('redis://127.0.0.1:1/0', 'x')\n"
            "except memcuda.FailedPrecondition as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": child_pythonpath()})
    assert "pip install 'memcuda[redis]'" in out.stdout, out.stderr

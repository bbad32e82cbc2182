"""The client's mapping calls (_cuda.import_pieces, open_legacy and
Mapping.close), in C (with the arena for VMM) and in Python through ctypes, against a stand-in
libcuda.so.1 (tests/fakecuda.c) that keeps the driver's books strictly: a
map inside one reservation and over no other mapping, a free of exactly
what was reserved. Each case runs in a child interpreter that loads the
stand-in. The GPU tests map real memory through the same calls."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import child_pythonpath
from memcuda import _cuda

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the stand-in driver")
    d = tmp_path_factory.mktemp("fakecuda")
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), str(HERE / "fakecuda.c")], check=True)
    return d


PRELUDE = textwrap.dedent("""
    import ctypes, json, os, sys
    from memcuda import _cuda
    if sys.argv[1] == "python":
        _cuda.c_vmm_map = _cuda.c_vmm_unmap = _cuda.c_ipc_open = _cuda.c_ipc_close = None
    drv = ctypes.CDLL("libcuda.so.1")
    def memfd(size):
        fd = os.memfd_create("seg")
        os.ftruncate(fd, size)
        return fd
    def books():
        return [drv.fake_reservations(), drv.fake_mappings(), drv.fake_handles(), drv.fake_context_depth()]
    def arena():
        from memcuda import _speedups
        return list(_speedups.vmm_arena())
    out = {}
""")


def run_case(driver: Path, path: str, body: str) -> dict[str, Any]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(driver), PYTHONPATH=child_pythonpath())
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    p = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def paths() -> list[str]:
    return ["python"] + (["c"] if _cuda.c_vmm_map is not None else [])


@pytest.mark.parametrize("path", paths())
def test_mappings_leave_nothing_behind(fake_driver: Path, path: str) -> None:
    out = run_case(fake_driver, path, """
        a, b = memfd(2 << 20), memfd(6 << 20)
        maps = [_cuda.import_pieces([(a, 2 << 20)], 0, 0), _cuda.import_pieces([(b, 6 << 20), (a, 2 << 20)], 4096, 0)]
        out["mapped"] = books()
        out["ptrs"] = [m.ptr - m.base for m in maps]
        for m in maps:
            m.close()
            m.close()  # twice: the second does nothing
        out["after"] = books()
    """)
    assert out["ptrs"] == [0, 4096]
    assert out["mapped"][1:] == [3, 0, 0]  # three allocations mapped, handles released, context popped
    assert out["after"][1:] == [0, 0, 0]
    if path == "python":
        assert out["mapped"][0] == 2 and out["after"][0] == 0  # a reservation per mapping, freed at close


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_the_arena_carves_and_takes_back_ranges(fake_driver: Path) -> None:
    out = run_case(fake_driver, "c", """
        a, b = memfd(2 << 20), memfd(4 << 20)
        m1 = _cuda.import_pieces([(a, 2 << 20)], 0, 0)
        m2 = _cuda.import_pieces([(b, 4 << 20)], 0, 0)
        out["one_reservation"] = books()[0]
        out["adjacent"] = m2.base - m1.base
        out["arena"] = arena()
        m1.close()
        m3 = _cuda.import_pieces([(a, 2 << 20)], 0, 0)
        out["reused"] = m3.base == m1.base
        m2.close(); m3.close()
        out["whole_again"] = arena()
        out["after"] = books()
    """)
    assert out["one_reservation"] == 1
    assert out["adjacent"] == 2 * MIB
    assert out["arena"] == [1, 64 * GIB - 6 * MIB]
    assert out["reused"]
    assert out["whole_again"] == [1, 64 * GIB]  # the free ranges merged back into one
    assert out["after"] == [1, 0, 0, 0]  # the chunk stays reserved for the next mapping


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_mappings_the_arena_does_not_take_reserve_their_own(fake_driver: Path) -> None:
    out = run_case(fake_driver, "c", """
        odd, huge = memfd(3 << 20), memfd(9 << 30)  # not whole granules; larger than the arena serves
        m1 = _cuda.import_pieces([(odd, 3 << 20)], 0, 0)
        m2 = _cuda.import_pieces([(huge, 9 << 30)], 0, 0)
        out["mapped"] = books() + arena()
        m1.close(); m2.close()
        out["after"] = books() + arena()
    """)
    assert out["mapped"] == [2, 2, 0, 0, 0, 0]  # two reservations of their own, no arena chunk
    assert out["after"] == [0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("path", paths())
def test_a_failed_mapping_undoes_every_step(fake_driver: Path, path: str) -> None:
    out = run_case(fake_driver, path, """
        a = memfd(2 << 20)
        good = _cuda.import_pieces([(a, 2 << 20)], 0, 0)
        before = books()
        errors = []
        for parts in ([(a, 2 << 20), (999, 2 << 20)],  # a descriptor the driver cannot import
                      [(a, 2 << 20), (a, 4 << 20)]):  # a size that is not the allocation's
            try:
                _cuda.import_pieces(parts, 0, 0)
            except _cuda.CudaError as e:
                errors.append(str(e))
        out["errors"] = errors
        out["unchanged"] = books() == before
        out["free_before_close"] = arena() if sys.argv[1] == "c" else None
        good.close()
        out["after"] = books()
    """)
    assert len(out["errors"]) == 2
    assert out["errors"][0].startswith("cuMemImportFromShareableHandle: CUDA_ERROR_INVALID_HANDLE")
    assert out["errors"][1].startswith("cuMemMap: CUDA_ERROR_INVALID_VALUE")
    assert out["unchanged"]
    if path == "c":
        assert out["free_before_close"] == [1, 64 * GIB - 2 * MIB]  # the failed ranges went back
    assert out["after"][1:] == [0, 0, 0]


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_a_mapping_closes_through_the_path_that_made_it(fake_driver: Path) -> None:
    # Made in C from the arena, closed after the C path was turned off: the
    # range must go back to the arena, which the driver's free would refuse.
    out = run_case(fake_driver, "c", """
        a = memfd(2 << 20)
        m = _cuda.import_pieces([(a, 2 << 20)], 0, 0)
        _cuda.c_vmm_map = _cuda.c_vmm_unmap = None
        m.close()
        out["after"] = books() + arena()
    """)
    assert out["after"] == [1, 0, 0, 0, 1, 64 * GIB]


@pytest.mark.parametrize("path", paths())
def test_legacy_handles_open_and_close(fake_driver: Path, path: str) -> None:
    out = run_case(fake_driver, path, """
        import base64
        ms = [_cuda.open_legacy(base64.b64encode(b"h" + bytes([i]) + bytes(62)).decode(), 2 << 20, 0) for i in (1, 2)]
        out["ptrs"] = [m.ptr for m in ms]
        out["open"] = drv.fake_opened()
        try:
            _cuda.open_legacy(base64.b64encode(bytes(64)).decode(), 2 << 20, 0)
        except _cuda.CudaError as e:
            out["error"] = str(e)
        for m in ms:
            m.close()
        out["after"] = [drv.fake_opened(), drv.fake_context_depth()]
    """)
    assert out["ptrs"] == [0x300000000000 + (1 << 21), 0x300000000000 + (2 << 21)]
    assert out["open"] == 2
    assert out["error"].startswith("cuIpcOpenMemHandle: CUDA_ERROR_INVALID_VALUE")
    assert out["after"] == [0, 0]


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_bad_parts_are_refused_before_any_driver_call() -> None:
    from memcuda import _speedups

    with pytest.raises(ValueError, match="1 to 64 parts"):
        _speedups.vmm_map(0, 0, [])
    with pytest.raises(ValueError, match="size 0"):
        _speedups.vmm_map(0, 0, [(3, 0)])
    with pytest.raises(TypeError):
        _speedups.vmm_map(0, 0, [("fd", 2 << 20)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="64 bytes"):
        _speedups.ipc_open(0, bytes(63))


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_a_context_that_cannot_be_made_current_fails_every_call_before_the_driver_work(fake_driver: Path) -> None:
    out = run_case(fake_driver, "c", """
        from memcuda import _speedups
        bad = 0xbad  # the stand-in refuses to push it
        fd = memfd(2 << 20)
        out["map"] = list(_speedups.vmm_map(bad, 0, [(fd, 2 << 20)]))
        out["unmap"] = list(_speedups.vmm_unmap(bad, 1 << 40, [2 << 20]))
        out["open"] = list(_speedups.ipc_open(bad, bytes(64)))
        out["close"] = list(_speedups.ipc_close(bad, 1 << 40))
        out["books"] = books()
    """)
    assert out["map"] == [0, 1, "cuCtxPushCurrent"]
    assert out["unmap"] == [1, "cuCtxPushCurrent"]
    assert out["open"] == [0, 1, "cuCtxPushCurrent"]
    assert out["close"] == [1, "cuCtxPushCurrent"]
    assert out["books"] == [0, 0, 0, 0], "a failed push left a reservation, mapping, handle or context behind"


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_without_a_driver_the_calls_say_so(tmp_path: Path) -> None:
    # No libcuda.so.1 on the search path (this directory is empty, and the
    # machine's own, if any, is hidden by an unloadable one of that name).
    (tmp_path / "libcuda.so.1").write_bytes(b"not a shared object")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), PYTHONPATH=child_pythonpath())
    code = textwrap.dedent("""
        import ctypes, json, sys
        try:
            ctypes.CDLL("libcuda.so.1")
            sys.exit(77)  # a driver loads after all: nothing to check here
        except OSError:
            pass
        from memcuda import _speedups
        print(json.dumps([list(_speedups.vmm_map(1, 0, [(0, 2 << 20)])), list(_speedups.vmm_unmap(1, 1 << 40, [2 << 20])),
                          list(_speedups.ipc_open(1, bytes(64))), list(_speedups.ipc_close(1, 1 << 40))]))
    """)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if p.returncode == 77:
        pytest.skip("a libcuda.so.1 loads here despite the unloadable one first on the path")
    assert p.returncode == 0, p.stderr
    want = "dlopen libcuda.so.1"
    assert json.loads(p.stdout) == [[0, 3, want], [3, want], [0, 3, want], [3, want]]


@pytest.mark.skipif(_cuda.c_vmm_map is None, reason="the C module is not built")
def test_an_unmap_the_driver_refuses_is_named_and_keeps_the_range(fake_driver: Path) -> None:
    out = run_case(fake_driver, "c", """
        from memcuda import _speedups
        a, b = memfd(2 << 20), memfd(4 << 20)
        ctx = _cuda._primary(0).value
        base, rc, _ = _speedups.vmm_map(ctx, 0, [(a, 2 << 20), (b, 4 << 20)])
        out["wrong"] = list(_speedups.vmm_unmap(ctx, base, [4 << 20, 2 << 20]))  # sizes in the wrong order
        out["kept"] = arena()
        out["right"] = list(_speedups.vmm_unmap(ctx, base, [2 << 20, 4 << 20]))
        out["after"] = books() + arena()
    """)
    assert out["wrong"] == [1, "cuMemUnmap"]
    assert out["kept"] == [1, 64 * GIB - 6 * MIB], "a failed unmap gave its range back"
    assert out["right"] == [0, ""]
    assert out["after"] == [1, 0, 0, 0, 1, 64 * GIB]

"""Model weights in one call: publish a state dict, load it back zero-copy,
build a module on it (host backend here, each GPU backend too)."""
from __future__ import annotations

from typing import Any

import pytest

import memcuda

torch = pytest.importorskip("torch")


def _model() -> Any:
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


def _roundtrip(c: memcuda.Client, device: str) -> None:
    torch.manual_seed(0)
    src = _model().to(device)
    held = memcuda.publish_state_dict(src, "w.mlp/", client=c)
    assert set(held) == set(src.state_dict())
    for t in held.values():
        t.release()
    sd = memcuda.load_state_dict("w.mlp/", client=c)
    assert set(sd) == set(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(sd[k], v), k
    m = memcuda.module_from_store(_model, "w.mlp/", client=c)
    x = torch.randn(5, 16, device=device)
    assert torch.allclose(m(x), src(x))
    # The module's parameters are the shared memory: a publish of new
    # weights under the same names is seen without reloading.
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    for t in memcuda.publish_state_dict(src, "w.mlp/", client=c).values():
        t.release()
    if device != "cpu":
        torch.cuda.synchronize()
    assert torch.allclose(m(x), src(x)), "the module computes on the published memory"
    assert m[0].weight.data_ptr() == memcuda.load_state_dict("w.mlp/", client=c)["0.weight"].data_ptr() or device == "cpu"


def test_state_dict_on_the_host(agent) -> None:
    with memcuda.connect() as c:
        _roundtrip(c, "cpu")
        with pytest.raises(memcuda.NotFound):
            memcuda.load_state_dict("w.none/", client=c)
        with pytest.raises(memcuda.InvalidArgument):
            memcuda.publish_state_dict({}, "w.empty/", client=c)
        with pytest.raises(memcuda.AlreadyExists):
            memcuda.publish_state_dict({"0.weight": torch.zeros(3)}, "w.mlp/", client=c)


@pytest.mark.gpu
def test_state_dict_on_gpus(gpu_agent) -> None:
    with memcuda.connect() as c:
        _roundtrip(c, "cuda")

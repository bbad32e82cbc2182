"""One copy of a model's weights served to N processes, against N private
copies loaded from local disk, in the same run (GPU; also the weights demo).

A randomly initialised decoder-only transformer of about 1 B parameters
(bf16) is built here, published with memcuda.publish_state_dict, and saved
with torch.save and safetensors to local disk. Then, for N = 4 and 8, N
fresh processes each load it and run a first forward pass: through mem-cuda
(module_from_store: zero-copy), torch.load(map_location="cuda") and
safetensors.torch.load_file(device="cuda"). While all N hold their model,
the device's used memory is read; N processes that only start CUDA give the
contexts' share. Prints a Markdown table; --out writes the numbers as JSON.
Needs a running agent ($MEMCUDA_SOCKET) on a GPU backend."""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

PREFIX = "bench.weights/"


def make_model(layers: int, dim: int, vocab: int) -> Any:
    """A decoder-only transformer: embeddings, then per layer one-head
    attention and an MLP with pre-norms, and a tied-free output head."""
    import torch
    from torch import nn

    class Block(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
            self.up, self.down = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

        def forward(self, x: Any) -> Any:
            h = self.ln1(x)
            att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / math.sqrt(dim), dim=-1)
            x = x + self.o(att @ self.v(h))
            return x + self.down(torch.relu(self.up(self.ln2(x))))

    class Model(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.head = nn.Linear(dim, vocab, bias=False)

        def forward(self, tokens: Any) -> Any:
            x = self.embed(tokens)
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    return Model()


def _worker(method: str, cfg: dict[str, Any], paths: dict[str, str], ready: Any, go: Any, out: Any) -> None:
    t_start = time.perf_counter()
    import torch

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the context
    t_cuda = time.perf_counter()
    layers, dim, vocab = cfg["layers"], cfg["dim"], cfg["vocab"]
    factory: Callable[[], Any] = lambda: make_model(layers, dim, vocab).to(torch.bfloat16)  # noqa: E731
    model: Optional[Any] = None
    if method == "memcuda":
        import memcuda

        model = memcuda.module_from_store(factory, PREFIX)
    elif method == "torch.load":
        sd = torch.load(paths["pt"], map_location="cuda", mmap=True)
        with torch.device("meta"):
            model = factory()
        model.load_state_dict(sd, assign=True)
    elif method == "safetensors":
        from safetensors.torch import load_file

        sd = load_file(paths["safetensors"], device="cuda")
        with torch.device("meta"):
            model = factory()
        model.load_state_dict(sd, assign=True)
    if model is not None:
        tokens = torch.arange(cfg["seq"], device="cuda").unsqueeze(0)
        with torch.no_grad():
            y = model(tokens)
        checksum = float(y.float().sum().item())  # synchronises
    else:
        checksum = 0.0
    t_done = time.perf_counter()
    out.put({"pid": os.getpid(), "first_forward_s": t_done - t_start, "load_and_forward_s": t_done - t_cuda,
             "cuda_init_s": t_cuda - t_start, "checksum": checksum})
    ready.wait()  # every worker holds its model: the parent reads the memory
    go.wait()


def _used_bytes() -> int:
    import torch

    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def run_group(method: str, n: int, cfg: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Barrier(n + 1), ctx.Event(), ctx.Queue()
    before = _used_bytes()
    procs = [ctx.Process(target=_worker, args=(method, cfg, paths, ready, go, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    ready.wait()
    time.sleep(0.5)  # let freed staging memory settle
    used = _used_bytes() - before
    go.set()
    for p in procs:
        p.join(60)
    return {"method": method, "n": n, "device_bytes": used, "workers": results}


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", default="4,8")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/memcuda-weights")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import torch

    import memcuda

    cfg = {"layers": args.layers, "dim": args.dim, "vocab": args.vocab, "seq": args.seq}
    os.makedirs(args.dir, exist_ok=True)
    paths = {"pt": os.path.join(args.dir, "model.pt"), "safetensors": os.path.join(args.dir, "model.safetensors")}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = make_model(args.layers, args.dim, args.vocab).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    held = memcuda.publish_state_dict(sd, PREFIX)
    torch.cuda.synchronize()
    t_publish = time.perf_counter() - t0
    for t in held.values():
        t.release()
    torch.save(sd, paths["pt"])
    from safetensors.torch import save_file

    save_file(sd, paths["safetensors"])
    weight_bytes = sum(v.numel() * v.element_size() for v in sd.values())
    tokens = torch.arange(args.seq, device="cuda").unsqueeze(0)
    with torch.no_grad():
        want = float(model(tokens).float().sum().item())
    del model, sd
    torch.cuda.empty_cache()
    print(f"model: {n_params / 1e9:.3f} B parameters, {weight_bytes / 2**30:.2f} GiB bf16 in {len(held)} tensors; "
          f"published in {t_publish:.2f} s; {torch.cuda.get_device_name(0)}")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "params": n_params, "weight_bytes": weight_bytes,
                               "publish_s": t_publish, "groups": []}
    rows = []
    for n in [int(x) for x in args.procs.split(",")]:
        ctx_group = run_group("cuda-only", n, cfg, paths)
        ctx_bytes = ctx_group["device_bytes"]
        results["groups"].append(ctx_group)
        for method in ("memcuda", "torch.load", "safetensors"):
            dropped = drop_page_cache() if method != "memcuda" else None
            g = run_group(method, n, cfg, paths)
            g["page_cache_dropped"] = dropped
            results["groups"].append(g)
            bad = [w for w in g["workers"] if abs(w["checksum"] - want) > 1e-3 * max(1.0, abs(want))]
            if bad:
                print(f"{method} N={n}: {len(bad)} workers computed another output ({bad[0]['checksum']} != {want})")
            # mem-cuda's one copy is the agent's, resident before the group started.
            weights_mem = g["device_bytes"] - ctx_bytes + (weight_bytes if method == "memcuda" else 0)
            ff = [w["first_forward_s"] for w in g["workers"]]
            lf = [w["load_and_forward_s"] for w in g["workers"]]
            rows.append((n, method, g["device_bytes"], weights_mem, statistics.median(ff), max(ff), statistics.median(lf),
                         "" if dropped is None else ("dropped" if dropped else "warm")))
            for w in g["workers"]:
                print(f"[{method} N={n} pid {w['pid']}] first forward after {w['first_forward_s']:.2f} s "
                      f"(CUDA start {w['cuda_init_s']:.2f} s, load + forward {w['load_and_forward_s']:.2f} s), output {w['checksum']:.1f}")
    memcuda.shared_client().close()
    with memcuda.connect() as c:
        for info in c.list(PREFIX):
            c.delete(info.name)
    print()
    print(f"### {results['device']}: one copy of a {n_params / 1e9:.2f} B-parameter model ({weight_bytes / 2**30:.2f} GiB) for N processes")
    print()
    print("| N | load | device memory the N processes added | weights on the device (mem-cuda: with the agent's copy) | "
          "time to first forward, median / slowest | load + forward after CUDA start, median | page cache |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, method, used, wm, ffm, ffx, lfm, pc in rows:
        print(f"| {n} | {method} | {used / 2**30:.2f} GiB | {wm / 2**30:.2f} GiB ({wm / weight_bytes:.2f} copies) | "
              f"{ffm:.2f} s / {ffx:.2f} s | {lfm:.2f} s | {pc} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""The main job on a GPU: two processes share a named tensor through the
agent ($MEMCUDA_SOCKET). A writer creates and fills a bf16 tensor and exits;
a reader opens the same GPU memory by name, checks it and writes back; this
process sees the write. Run by `make demo` when PyTorch sees a GPU."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

import memcuda

NAME = "demo.weights"
ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))

WRITER = """
import os, torch, memcuda
s = memcuda.connect()
t = s.create("demo.weights", (4096, 4096), "bf16")
x = t.torch()
torch.manual_seed(0)
x.copy_(torch.randn(4096, 4096, dtype=torch.bfloat16, device=x.device))
torch.cuda.synchronize()
print(f"[writer pid {os.getpid()}] created demo.weights bf16[4096,4096] on {torch.cuda.get_device_name(x.device)} "
      f"({t.info.ipc_mode}, {t.info.device_uuid}), filled it, sum {x.float().sum().item():.4f}; exiting", flush=True)
"""

READER = """
import os, torch, memcuda
with memcuda.connect() as s, s.get("demo.weights") as t:
    x = t.torch()
    torch.manual_seed(0)
    ok = torch.equal(x, torch.randn(4096, 4096, dtype=torch.bfloat16, device=x.device))
    print(f"[reader pid {os.getpid()}] opened demo.weights by name, zero-copy at {x.data_ptr():#x}: "
          f"{'all 16777216 elements match' if ok else 'MISMATCH'}, sum {x.float().sum().item():.4f}; writing 42 to [0,0]", flush=True)
    x[0, 0] = 42
    torch.cuda.synchronize()
    raise SystemExit(0 if ok else 1)
"""


def main() -> None:
    with memcuda.connect() as s:
        h = s.hello
        print(f"[demo   pid {os.getpid()}] agent {h['agent']} on node {h['node']}, backend {h['mode']}, "
              f"{len(h['devices'])} device(s)")
        try:
            s.delete(NAME)
        except memcuda.NotFound:
            pass
        for code in (WRITER, READER):
            subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=ENV, check=True)
        with s.get(NAME) as t:
            v = t.torch()[0, 0].item()
            print(f"[demo   pid {os.getpid()}] element [0,0] is {v}: the reader's write is visible here "
                  f"(refcount {t.info.refcount})")
            assert v == 42
        s.delete(NAME)
        print(f"[demo   pid {os.getpid()}] deleted {NAME}; demo OK")


if __name__ == "__main__":
    main()

"""The DDP and FSDP2 columns of the transform matrix, for every layer subject, in ONE two-process launch.

    python tests/transform_workers/dist_matrix.py OUT.json

Two ranks (torch.multiprocessing spawn, gloo, 127.0.0.1 only) each take half of the batch. Every cell is checked on
both ranks; OUT.json maps subject -> column -> {"ok": bool, "error": "Type: message"} (the first rank's failure).

- ddp: after one backward through DistributedDataParallel, each parameter's gradient equals the single-process
  gradient of the full-batch mean loss (DDP averages the ranks' gradients of their half-batch mean losses).
- fsdp2: after one SGD step with ``fully_shard`` on the layer (mesh of 2 CPU ranks), each full parameter equals the
  one from the single-process step on the full batch.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _transform_cases import EPS32, SUBJECTS, Subject, build, close, close_all, cotangents, inputs, scalar_loss

WORLD = 2
LR = 0.1


def _rows(s: Subject, rank: int) -> tuple[slice, int, int]:
    n = inputs(s)[0].shape[0]
    h = n // WORLD
    return slice(rank * h, (rank + 1) * h), h, n


def _reference(s: Subject) -> tuple[tuple[torch.Tensor, ...], torch.nn.Module, list[torch.Tensor | None]]:
    mod = build(s)
    xs = inputs(s)
    outs = mod(*xs)
    cots = cotangents(outs)
    loss = scalar_loss(outs, cots) / xs[0].shape[0]
    grads = torch.autograd.grad(loss, list(mod.parameters()), allow_unused=True)
    return cots, mod, list(grads)


def ddp_cell(s: Subject, rank: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rows, h, _ = _rows(s, rank)
    cots, _, ref = _reference(s)
    mod = build(s, rows=rows)
    ddp = DDP(mod)
    outs = ddp(*(x[rows] for x in inputs(s)))
    (scalar_loss(outs, [c[rows] for c in cots]) / h).backward()
    # Both sides are float32 sums of the same terms in another order: 2*3k eps32 (tests/_transform_cases.py).
    close_all("DDP grad", [p.grad for p in mod.parameters()], ref, 2 * s.k(1) * EPS32, "2*3k eps32")


def fsdp_cell(s: Subject, rank: int, mesh: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    rows, h, _ = _rows(s, rank)
    cots, ref_mod, ref_grads = _reference(s)
    p0 = {n: p.detach().clone() for n, p in ref_mod.named_parameters()}
    ref_mod.zero_grad()
    for p, g in zip(ref_mod.parameters(), ref_grads, strict=True):
        p.grad = g
    torch.optim.SGD(ref_mod.parameters(), lr=LR).step()

    mod = build(s, rows=rows)
    fully_shard(mod.inner, mesh=mesh)  # type: ignore[arg-type]
    opt = torch.optim.SGD(mod.parameters(), lr=LR)
    outs = mod(*(x[rows] for x in inputs(s)))
    (scalar_loss(outs, [c[rows] for c in cots]) / h).backward()
    opt.step()
    for (name, p), (_, q) in zip(mod.named_parameters(), ref_mod.named_parameters(), strict=True):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        # Compared as the step taken, (p0 - p1) / lr, i.e. the gradient: 2*3k eps32 as DDP, plus the rounding of
        # p1 = p0 - lr g, eps32 |p0| on each side, divided by lr.
        g_ref = (p0[name] - q.detach()) / LR
        scale = max(float(g_ref.abs().max()), torch.finfo(torch.float32).tiny)
        tol = 2 * s.k(1) * EPS32 + 2 * EPS32 * float(p0[name].abs().max()) / (LR * scale)
        close(f"FSDP2 step of {name}", (p0[name] - full.detach()) / LR, g_ref, tol, "2*3k eps32 + rounding of step")
    inner = mod.inner
    if getattr(inner, "weight_rho", None) is not None and hasattr(inner, "KL"):
        # Outside forward the parameters are shards: KL() refuses with the way out, and after unshard() it runs.
        try:
            inner.KL()
        except TypeError as exc:
            if "sharded" not in str(exc):
                raise
        else:
            raise AssertionError("KL() on sharded parameters should refuse")
        inner.unshard()
        kl, _ = inner.KL()
        if not bool(torch.isfinite(kl)):
            raise AssertionError(f"KL() after unshard(): {float(kl)}")
        inner.reshard()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for s in SUBJECTS.values():
        if not s.layer:
            continue
        row: dict[str, dict[str, Any]] = {}
        for column, run in (("ddp", lambda s=s: ddp_cell(s, rank)), ("fsdp2", lambda s=s: fsdp_cell(s, rank, mesh))):
            try:
                run()
                row[column] = {"ok": True, "error": ""}
            except Exception as exc:
                row[column] = {"ok": False, "error": _describe(exc), "traceback": traceback.format_exc()[-3000:]}
            dist.barrier()
        results[s.name] = row
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def main(out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp.spawn(_rank_main, args=(port, str(out.parent)), nprocs=WORLD, join=True)
    ranks = [json.loads(Path(out.parent, f"rank{r}.json").read_text()) for r in range(WORLD)]
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ranks[0]:
        merged[name] = {}
        for column in ranks[0][name]:
            cells = [rk[name][column] for rk in ranks]
            bad = [c for c in cells if not c["ok"]]
            merged[name][column] = bad[0] if bad else cells[0]
    out.write_text(json.dumps(merged, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

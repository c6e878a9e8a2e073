"""One function per column of the transform matrix: ``CELLS[transform](subject)`` returns when the transform gives the
right answer and raises otherwise (AssertionError for a wrong answer, the library's own error for a refusal).

References are independent of the transform: the float64 eager module (exactly the float32 parameters and inputs,
see ``_transform_cases``), autograd on it, or torch's finite differences (gradcheck, gradgradcheck). Each comparison
states its tolerance next to it, in units of the float32 eps from ``Subject.k``.
"""

from __future__ import annotations

import copy
import io
import pickle
import re
from collections.abc import Callable, Sequence

import torch
from _transform_cases import (
    EPS32,
    SEED,
    Subject,
    build,
    close,
    close_all,
    concat,
    cotangents,
    flatten,
    inputs,
    install_noise,
    scalar_loss,
    sqrt_fan,
)
from torch import nn

F32, F64 = torch.float32, torch.float64


def _req(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(x.detach().clone().requires_grad_(True) for x in xs)


def forward_grads(mod: nn.Module, xs: Sequence[torch.Tensor], cots: Sequence[torch.Tensor] | None = None,
                  fwd: Callable[..., tuple[torch.Tensor, ...]] | None = None
                  ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
    """Outputs, and gradients of the fixed scalar loss with respect to (inputs..., parameters...)."""
    xs = _req(xs)
    outs = (fwd if fwd is not None else mod)(*xs)
    cots = cotangents(outs) if cots is None else cots
    wrt = [*xs, *mod.parameters()]
    loss = scalar_loss(outs, cots)
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return tuple(o.detach() for o in outs), tuple(grads)


def reference(s: Subject, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
    """float64 eager outputs and gradients (the independent reference)."""
    return forward_grads(build(s, F64), inputs(s, seed, F64))


def eager32(s: Subject, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
    return forward_grads(build(s, F32), inputs(s, seed, F32))


# ---- eager and autocast -------------------------------------------------------------------------------------------

def cell_eager(s: Subject) -> None:
    # float32 against the float64 reference: the forward within k eps, the gradients within 3k eps (Subject.k).
    outs, grads = eager32(s)
    r_outs, r_grads = reference(s)
    for o in outs:
        if o.dtype != F32:
            raise AssertionError(f"float32 input gave a {o.dtype} output")
    close_all("output", outs, r_outs, s.k(0) * EPS32, "float32 vs float64, k eps")
    close_all("grad", grads, r_grads, s.k(1) * EPS32, "float32 vs float64, 3k eps")


def _autocast(s: Subject, dtype: torch.dtype) -> None:
    mod = build(s, F32)
    xs = _req(inputs(s))
    with torch.autocast("cpu", dtype=dtype):
        outs = mod(*xs)
        want = F32 if s.autocast_out == "float32" else dtype
        for o in outs:
            if o.dtype != want:
                raise AssertionError(f"autocast {dtype}: output dtype {o.dtype}, the policy says {want} "
                                     f"({'as torch.layer_norm' if want == F32 else 'as nn.Linear'})")
        cots = cotangents(outs)
        loss = scalar_loss([o.float() for o in outs], cots)
    grads = torch.autograd.grad(loss, [*xs, *mod.parameters()], allow_unused=True)
    for p, gp in zip(mod.parameters(), grads[len(xs):], strict=True):
        if gp is not None and gp.dtype != p.dtype:
            raise AssertionError(f"autocast {dtype}: a {p.dtype} parameter got a {gp.dtype} gradient")
    r_outs, r_grads = eager32(s)
    if want == F32:
        # Computed in float32 as eager: eager's own bound, twice (each is within k eps of the truth).
        close_all("output", outs, r_outs, 2 * s.k(0) * EPS32, "float32 compute, 2k eps32")
        close_all("grad", grads, r_grads, 2 * s.k(1) * EPS32, "float32 compute, 2*3k eps32")
        return
    # Computed in float32 and rounded once to the autocast dtype: u = eps/2 per element, plus 2k eps32. A hidden
    # layer's output is rounded too and then summed over the next fan-in: u * sqrt(fan) * 4 per extra layer
    # (random-sign sums of `fan` terms each perturbed by u relative; 4 for the tail over the elements compared).
    u = torch.finfo(dtype).eps / 2
    tol = u * (1 + 4 * sqrt_fan(s) * (s.depth - 1)) + 2 * s.k(0) * EPS32
    close_all("output", [o.float() for o in outs], r_outs, tol, "one rounding to the autocast dtype")
    # The cotangent reaching the float32 compute is rounded to the autocast dtype (the cast's backward): relative u on
    # each, summed over at most `fan` terms per gradient element: 4 u sqrt(fan) per layer.
    gtol = 4 * u * sqrt_fan(s) * s.depth + 2 * s.k(1) * EPS32
    close_all("grad", grads, r_grads, gtol, "cotangent rounded to the autocast dtype")


def cell_autocast_bf16(s: Subject) -> None:
    _autocast(s, torch.bfloat16)


def cell_autocast_fp16(s: Subject) -> None:
    _autocast(s, torch.float16)


# ---- tracers ------------------------------------------------------------------------------------------------------

def _compile(s: Subject, backend: str) -> None:
    # One compiled module per subject, forward and backward (AOTAutograd compiles both graphs on the first call),
    # against eager float32 on the same inputs: both within k eps of the truth, so 2k (forward), 2*3k (gradients);
    # then the compiled forward on new inputs of the same shape (no recompile) against eager on those.
    import torch._dynamo
    import torch._inductor.config as ind

    torch._dynamo.reset()
    mod = build(s, F32)
    with ind.patch(compile_threads=1):
        cmod = torch.compile(mod, fullgraph=True, backend=backend)
        outs, grads = forward_grads(mod, inputs(s), fwd=cmod)
        outs_b = cmod(*inputs(s, 1))
    r_outs, r_grads = eager32(s)
    close_all("compiled output", outs, r_outs, 2 * s.k(0) * EPS32, "2k eps32")
    close_all("compiled grad", grads, r_grads, 2 * s.k(1) * EPS32, "2*3k eps32")
    close_all("compiled output, new input", [o.detach() for o in outs_b], eager32(s, 1)[0], 2 * s.k(0) * EPS32,
              "2k eps32")


def cell_compile(s: Subject) -> None:
    # backend="aot_eager": dynamo's capture with fullgraph, the fake (meta) kernels, functionalization and
    # AOTAutograd's joint forward/backward graph, i.e. every step where a library op can break, without inductor's
    # C++ code generation (30-90 s a subject on two shared cores). Inductor runs on the representatives below.
    _compile(s, "aot_eager")


def cell_compile_inductor(s: Subject) -> None:
    _compile(s, "inductor")


#: The subjects that also run under inductor: each norm kernel family, each Bayesian linear kernel at the size
#: that takes the fused path, and one convolution (CLT: F.conv2d and the ReLU moments' op in one graph).
INDUCTOR_SUBJECTS = frozenset({"RLayerNorm", "BayesianRLayerNorm2d", "BBBLinear[64x96]", "LRLinear[64x96]",
                               "CLTLinear[64x96]", "CLTConv2d"})


def cell_export(s: Subject) -> None:
    # Exported on inputs A, run on inputs B (same shapes, new values) against eager on B: 2k eps32.
    mod = build(s, F32)
    ep = torch.export.export(mod, inputs(s))
    outs = flatten(ep.module()(*inputs(s, 1)))
    close_all("exported output", outs, eager32(s, 1)[0], 2 * s.k(0) * EPS32, "2k eps32")


def _saved(tr: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The trace after a round trip through torch.jit.save and torch.jit.load (what a user ships): a trace that holds
    a Python call cannot be saved, and this raises."""
    buf = io.BytesIO()
    torch.jit.save(tr, buf)  # type: ignore[no-untyped-call]
    buf.seek(0)
    loaded: torch.jit.ScriptModule = torch.jit.load(buf)  # type: ignore[no-untyped-call]
    return loaded


def cell_jit_trace_nograd(s: Subject) -> None:
    # Traced under no_grad on inputs A, saved and loaded, run under no_grad on inputs B against eager on B: 2k eps32.
    mod = build(s, F32)
    with torch.no_grad():
        tr = _saved(torch.jit.trace(mod, inputs(s), check_trace=False))  # type: ignore[no-untyped-call]
        outs = flatten(tr(*inputs(s, 1)))
    close_all("traced output", outs, eager32(s, 1)[0], 2 * s.k(0) * EPS32, "2k eps32")


def cell_jit_trace_grad(s: Subject) -> None:
    # Traced with grad on inputs A, saved and loaded, run with grad on inputs B; outputs 2k eps32, gradients 2*3k
    # eps32 against eager.
    mod = build(s, F32)
    tr = _saved(torch.jit.trace(mod, _req(inputs(s)), check_trace=False))  # type: ignore[no-untyped-call]
    # the loaded module has its own parameters (same order as mod's): the gradients are taken with respect to them
    outs, grads = forward_grads(tr, inputs(s, 1), fwd=lambda *xs: flatten(tr(*xs)))
    r_outs, r_grads = eager32(s, 1)
    close_all("traced output", outs, r_outs, 2 * s.k(0) * EPS32, "2k eps32")
    close_all("traced grad", grads, r_grads, 2 * s.k(1) * EPS32, "2*3k eps32")


def cell_onnx(s: Subject) -> None:
    # Exported to ONNX on inputs A, run in onnxruntime on inputs B against eager float32 on B: 2k eps32 (a different
    # set of float32 kernels, each within the same bound).
    import onnxruntime as ort

    mod = build(s, F32)
    buf = io.BytesIO()
    prog = torch.onnx.export(mod, inputs(s), dynamo=True, verbose=False)
    assert prog is not None
    prog.save(buf)  # type: ignore[arg-type]
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs(s, 1), strict=True)})
    close_all("onnxruntime output", [torch.from_numpy(g) for g in got], eager32(s, 1)[0], 2 * s.k(0) * EPS32,
              "2k eps32")


# ---- torch.func ---------------------------------------------------------------------------------------------------

def cell_vmap(s: Subject) -> None:
    # vmap over a new leading dim holding two batches (A, B) of the usual shape, so sampling layers keep their stored
    # noise shape; each slice against eager float32 on that batch: 2k eps32.
    mod = build(s, F32)
    a, b = inputs(s), inputs(s, 1)
    stacked = [torch.stack([x, y]) for x, y in zip(a, b, strict=True)]
    outs = torch.func.vmap(lambda *xs: mod(*xs))(*stacked)
    for k, ref in enumerate((eager32(s)[0], eager32(s, 1)[0])):
        close_all(f"vmap slice {k}", [o[k] for o in outs], ref, 2 * s.k(0) * EPS32, "2k eps32")


def _first_sample_fn(mod: nn.Module, xs: Sequence[torch.Tensor], loss: bool
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The outputs of sample 0 (or the fixed scalar loss over them) as a function of sample 0 of the first input, the
    rest of the batch held fixed: every subject treats the samples of a batch independently, so this is the block of
    the full Jacobian (Hessian) that holds all its structure, at a fraction of the cost for the 64x96 subjects."""
    rest = tuple(xs[1:])
    tail = xs[0][1:]
    cots = [c[:1] for c in cotangents(mod(*xs))]

    def f(x0: torch.Tensor) -> torch.Tensor:
        outs = [o[:1] for o in mod(torch.cat([x0.unsqueeze(0), tail]), *rest)]
        return scalar_loss(outs, cots) if loss else concat(outs)

    return f


def cell_jacrev(s: Subject) -> None:
    # jacrev (float32) of sample 0's outputs with respect to sample 0 of the first input, against autograd's Jacobian
    # of the float64 reference: 3k eps32 (one order of differentiation).
    xs = inputs(s)
    jac = torch.func.jacrev(_first_sample_fn(build(s, F32), xs, loss=False))(xs[0][0])
    xs64 = inputs(s, 0, F64)
    ref = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
        _first_sample_fn(build(s, F64), xs64, loss=False), xs64[0][0])
    assert isinstance(ref, torch.Tensor)
    close("jacrev", jac, ref, s.k(1) * EPS32, "float32 vs float64 autograd, 3k eps")


def cell_forward_ad(s: Subject) -> None:
    # Eager forward-mode AD (torch.autograd.forward_ad, float32): the Jacobian of sample 0's outputs with respect to
    # sample 0 of the first input, a column per one-hot tangent, against autograd's Jacobian of the float64
    # reference: 3k eps32 (one order of differentiation, as jacrev).
    import torch.autograd.forward_ad as fwad

    xs = inputs(s)
    f = _first_sample_fn(build(s, F32), xs, loss=False)
    x0 = xs[0][0]
    cols = []
    for j in range(x0.numel()):
        t = torch.zeros(x0.numel(), dtype=x0.dtype)
        t[j] = 1.0
        with fwad.dual_level():
            out = f(fwad.make_dual(x0, t.reshape(x0.shape)))
            tangent = fwad.unpack_dual(out).tangent
        if tangent is None:  # no output depends on the input: a zero column
            tangent = torch.zeros_like(out)
        cols.append(tangent.reshape(-1))
    jac = torch.stack(cols, dim=-1).reshape(*out.shape, *x0.shape)
    xs64 = inputs(s, 0, F64)
    ref = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
        _first_sample_fn(build(s, F64), xs64, loss=False), xs64[0][0])
    assert isinstance(ref, torch.Tensor)
    close("forward AD", jac, ref, s.k(1) * EPS32, "float32 vs float64 autograd, 3k eps")


def cell_hessian(s: Subject) -> None:
    # torch.func.hessian (float32) of the fixed scalar loss of sample 0 with respect to sample 0 of the first input,
    # against torch.autograd.functional.hessian of the float64 reference: 9k eps32 (two orders).
    xs = inputs(s)
    h = torch.func.hessian(_first_sample_fn(build(s, F32), xs, loss=True))(xs[0][0])
    xs64 = inputs(s, 0, F64)
    ref = torch.autograd.functional.hessian(  # type: ignore[no-untyped-call]
        _first_sample_fn(build(s, F64), xs64, loss=True), xs64[0][0])
    assert isinstance(ref, torch.Tensor)
    close("hessian", h, ref, s.k(2) * EPS32, "float32 vs float64 autograd, 9k eps")


def cell_per_sample_grad(s: Subject) -> None:
    # torch.func.vmap(grad) over the batch (each sample as a batch of one) of the loss with respect to the parameters
    # and the sample, against a loop of autograd calls, sample by sample: 2*3k eps32. LR layers draw one noise per
    # row: the loop gives sample i row i of the stored noise; under vmap the layer keeps the whole batch's noise.
    mod = build(s, F32)
    xs = inputs(s)
    full_cots = cotangents(mod(*xs))
    params = {n: p.detach() for n, p in mod.named_parameters()}

    def loss(p: dict[str, torch.Tensor], sample: tuple[torch.Tensor, ...], cots: tuple[torch.Tensor, ...]
             ) -> torch.Tensor:
        outs = torch.func.functional_call(mod, p, tuple(x.unsqueeze(0) for x in sample))
        return scalar_loss(outs, [c.unsqueeze(0) for c in cots])

    g_p, g_x = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, 0, 0))(params, xs, full_cots)
    n = xs[0].shape[0]
    for i in range(n):
        one = build(s, F32, rows=slice(i, i + 1))
        sample = _req([x[i:i + 1] for x in xs])
        outs = one(*sample)
        names = [nm for nm, _ in one.named_parameters()]
        ref = torch.autograd.grad(scalar_loss(outs, [c[i:i + 1] for c in full_cots]),
                                  [*sample, *one.parameters()], allow_unused=True)
        got = [g[i] for g in g_x] + [g_p[nm][i] for nm in names]
        close_all(f"per-sample grad {i}", got, [r.squeeze(0) if j < len(sample) and r is not None else r
                                                for j, r in enumerate(ref)], 2 * s.k(1) * EPS32, "2*3k eps32")


# ---- finite differences -------------------------------------------------------------------------------------------

def _as_function(mod: nn.Module) -> tuple[Callable[..., tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    names = [n for n, _ in mod.named_parameters()]
    values = [p.detach().clone() for p in mod.parameters()]
    n_params = len(names)

    def f(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xs, ps = args[: len(args) - n_params], args[len(args) - n_params:]
        return tuple(torch.func.functional_call(mod, dict(zip(names, ps, strict=True)), xs))

    return f, values


def _gradcheck(s: Subject, second: bool) -> None:
    # float64, with respect to every input and parameter, torch's default tolerances (atol 1e-5, rtol 1e-3): central
    # differences with h = 1e-6 have truncation error O(h^2 f''') and rounding error O(u / h) ~ 1e-10, far below them.
    # fast_mode (torch's: compares v^T J u for random u, v, which a wrong Jacobian fails with probability 1) for
    # gradgradcheck, for the 64x96 subjects and for the convolutions (400 to 700 input and parameter elements: the
    # full Jacobian took 20-70 s), to keep the cost down; the full Jacobian for the first order otherwise.
    mod = build(s, F64)
    f, ps = _as_function(mod)
    args = tuple(t.requires_grad_(True) for t in [*inputs(s, 0, F64), *ps])
    fast = second or "[64x96]" in s.name or "Conv2d" in s.name
    check = torch.autograd.gradgradcheck if second else torch.autograd.gradcheck
    ok = check(f, args, fast_mode=fast)
    if not ok:
        raise AssertionError("gradgradcheck returned False" if second else "gradcheck returned False")


def cell_gradcheck(s: Subject) -> None:
    _gradcheck(s, False)


def cell_gradgradcheck(s: Subject) -> None:
    _gradcheck(s, True)


# ---- module life cycle --------------------------------------------------------------------------------------------

def _same_state(what: str, a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        raise AssertionError(f"{what}: state_dict keys {list(sa)} != {list(sb)}")
    for k in sa:
        if sa[k].shape != sb[k].shape or sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k]):
            raise AssertionError(f"{what}: state_dict[{k!r}] differs")


def _same_outputs(what: str, a: nn.Module, b: nn.Module, s: Subject) -> None:
    # The same parameters, noise and code path: bit for bit.
    oa, ga = forward_grads(a, inputs(s))
    ob, gb = forward_grads(b, inputs(s))
    close_all(f"{what} output", oa, ob, 0.0, "bit for bit")
    close_all(f"{what} grad", ga, gb, 0.0, "bit for bit")


def cell_meta(s: Subject) -> None:
    # Built on device="meta", then to_empty(cpu) and reset_parameters() of every submodule that has one (the FSDP
    # and torchtitan recipe), seeded as a fresh build: the same state_dict and outputs, bit for bit.
    assert s.ctor is not None
    meta = s.ctor(device="meta")
    for p in meta.parameters():
        if p.device.type != "meta":
            raise AssertionError(f"device='meta' left a parameter on {p.device}")
    meta = meta.to_empty(device="cpu")
    torch.manual_seed(SEED)
    with torch.no_grad():
        for m in meta.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    got = build(s, F32)
    got.inner = meta
    if s.sampling:
        install_noise(got, tuple(inputs(s)[0].shape))
    fresh = build(s, F32)
    _same_state("meta then to_empty", got, fresh)
    _same_outputs("meta then to_empty", got, fresh, s)


def cell_deepcopy(s: Subject) -> None:
    mod = build(s, F32)
    cp = copy.deepcopy(mod)
    _same_state("deepcopy", cp, mod)
    _same_outputs("deepcopy", cp, mod, s)


def cell_pickle(s: Subject) -> None:
    mod = build(s, F32)
    cp = pickle.loads(pickle.dumps(mod))
    _same_state("pickle", cp, mod)
    _same_outputs("pickle", cp, mod, s)


CELLS: dict[str, Callable[[Subject], None]] = {
    "eager": cell_eager,
    "autocast_bf16": cell_autocast_bf16,
    "autocast_fp16": cell_autocast_fp16,
    "compile": cell_compile,
    "compile_inductor": cell_compile_inductor,
    "export": cell_export,
    "jit_trace_nograd": cell_jit_trace_nograd,
    "jit_trace_grad": cell_jit_trace_grad,
    "vmap": cell_vmap,
    "jacrev": cell_jacrev,
    "hessian": cell_hessian,
    "forward_ad": cell_forward_ad,
    "per_sample_grad": cell_per_sample_grad,
    "gradcheck": cell_gradcheck,
    "gradgradcheck": cell_gradgradcheck,
    "meta": cell_meta,
    "deepcopy": cell_deepcopy,
    "pickle": cell_pickle,
}

#: Columns run by the two-process launch (tests/transform_workers/dist_matrix.py).
DIST_COLUMNS = ("ddp", "fsdp2")

#: Every column, in the order of the docs table.
COLUMNS = (*list(CELLS)[:15], "onnx", *list(CELLS)[15:], *DIST_COLUMNS)
CELLS["onnx"] = cell_onnx

#: Columns whose cells run in a child process forked from a preloaded server: a crash there (a C kernel handed
#: buffers it does not expect, as autocast did to CLTLinear) fails that cell only.
ISOLATED = frozenset({"autocast_bf16", "autocast_fp16"})


def not_applicable(s: Subject, column: str) -> str | None:
    """Why a cell does not exist, or None."""
    if not s.layer and column in ("meta", "deepcopy", "pickle", *DIST_COLUMNS):
        return "a functional form has no module state"
    if column == "compile_inductor" and s.name not in INDUCTOR_SUBJECTS:
        return "inductor runs on one subject per kernel family (cost); the compile column covers capture"
    return None


_CAUSES = ("No ONNX function found", "Error when translating", "Could not find an implementation",
           "NotImplementedError")


def describe(exc: BaseException) -> str:
    """``Type: first line`` of an error, and for a long report (ONNX's) the line that names the cause."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    cause = next((line.strip() for line in text[1:] if any(c in line for c in _CAUSES)), "")
    if cause:  # ONNX's report: the generic first lines say nothing, the cause line names the op
        return f"{type(exc).__name__}: {re.sub(r'^<class [^>]*>: ', '', cause)}"[:400]
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


__all__ = ["CELLS", "COLUMNS", "DIST_COLUMNS", "INDUCTOR_SUBJECTS", "ISOLATED", "describe", "forward_grads",
           "not_applicable"]

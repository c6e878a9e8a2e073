"""The benchmark gate (rln_verified.bench) on synthetic pytest-benchmark JSON, and exact saved-byte counts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rln_verified.bench import GateError, Thresholds, evaluate, main, saved_bytes, saved_tensors
from rln_verified.bench._gate import parse_run, parse_thresholds
from rln_verified.bench.calibrate import propose


def _bench(group: str, kind: str, name: str, vs: list[str], median: float, *, lo: float | None = None,
           hi: float | None = None, saved: int | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"kind": kind, "name": name, "vs": vs, "shape": "(2, 3)", "dtype": "float32",
                             "device": "cpu"}
    if saved is not None:
        extra["saved_bytes"] = saved
    stats = {"median": median, "min": median * 0.9 if lo is None else lo, "max": median * 1.2 if hi is None else hi,
             "rounds": 10}
    return {"group": group, "name": f"test_{name}", "fullname": f"b.py::test_{name}", "extra_info": extra,
            "stats": stats}


def _run(*benches: dict[str, Any]) -> dict[str, Any]:
    return {"benchmarks": list(benches), "machine_info": {}, "version": "5.3.1"}


BASE = _bench("k s1", "k", "Base", [], 2.0, saved=1000)
CONT = _bench("k s1", "k", "Cont", ["Base"], 3.0, saved=1050)


def _files(tmp_path: Path, run: dict[str, Any], toml: str) -> tuple[str, str]:
    j, t = tmp_path / "run.json", tmp_path / "thr.toml"
    j.write_text(json.dumps(run))
    t.write_text(toml)
    return str(j), str(t)


def test_pairing_and_ratio_of_medians() -> None:
    rows = evaluate(parse_run(_run(BASE, CONT)), Thresholds(time={"k:Cont/Base": 2.0}))
    time_row = next(r for r in rows if r.metric == "time")
    assert (time_row.contender, time_row.baseline, time_row.group) == ("Cont", "Base", "k s1")
    assert time_row.ratio == pytest.approx(3.0 / 2.0)
    assert time_row.ratio_min == pytest.approx(2.7 / 1.8)
    assert time_row.ratio_max == pytest.approx(3.6 / 2.4)
    assert time_row.verdict == "pass"


def test_pairs_only_inside_a_group() -> None:
    # the same names in two groups (two shapes): each contender meets its own group's baseline
    b2 = _bench("k s2", "k", "Base", [], 10.0)
    c2 = _bench("k s2", "k", "Cont", ["Base"], 11.0)
    rows = evaluate(parse_run(_run(BASE, CONT, b2, c2)), Thresholds())
    ratios = {r.group: r.ratio for r in rows if r.metric == "time"}
    assert ratios == {"k s1": pytest.approx(1.5), "k s2": pytest.approx(1.1)}
    assert all(r.verdict == "info" for r in rows)


def _windowed(b: dict[str, Any], window: int, median: float) -> dict[str, Any]:
    out = json.loads(json.dumps(b))
    out["extra_info"]["window"] = window
    out["name"] = f"{out['name']}[w{window}]"
    out["stats"].update(median=median, min=median * 0.9, max=median * 1.2)
    return out


def test_windows_pair_within_a_window_and_take_the_median() -> None:
    # Window ratios 1.5, 4.0 (a slow contender window) and 1.2: the median is 1.5, the range 1.2..4.0. Pairing
    # across windows would give other ratios (e.g. 8/2 vs 3/2), so a wrong pairing changes the median.
    benches = []
    for w, (b, c) in enumerate([(2.0, 3.0), (2.0, 8.0), (5.0, 6.0)]):
        benches += [_windowed(BASE, w, b), _windowed(CONT, w, c)]
    rows = evaluate(parse_run(_run(*benches)), Thresholds(time={"k:Cont/Base": 1.6}))
    (row,) = [r for r in rows if r.metric == "time"]
    assert (row.ratio, row.ratio_min, row.ratio_max, row.windows) == (pytest.approx(1.5), pytest.approx(1.2),
                                                                      pytest.approx(4.0), 3)
    assert row.verdict == "pass"  # the one slow window does not fail the gate; two would (median 4.0 > 1.6)
    benches[1] = _windowed(CONT, 0, 9.0)
    (row,) = [r for r in evaluate(parse_run(_run(*benches)), Thresholds(time={"k:Cont/Base": 1.6}))
              if r.metric == "time"]
    assert row.ratio == pytest.approx(4.0) and row.verdict == "FAIL"


def test_window_must_be_a_non_negative_int() -> None:
    for bad in (-1, "1", True, 1.5):
        b = json.loads(json.dumps(BASE))
        b["extra_info"]["window"] = bad
        with pytest.raises(GateError, match="window"):
            parse_run(_run(b))


def test_threshold_and_margin() -> None:
    run = parse_run(_run(BASE, CONT))
    thr = Thresholds(time={"k:Cont/Base": 1.4})
    assert next(r for r in evaluate(run, thr) if r.metric == "time").verdict == "FAIL"
    row = next(r for r in evaluate(run, thr, margin=1.1) if r.metric == "time")
    assert row.verdict == "pass"
    assert row.limit == pytest.approx(1.54)
    # the boundary is inclusive
    assert next(r for r in evaluate(run, Thresholds(time={"k:Cont/Base": 1.5})) if r.metric == "time").verdict == "pass"
    with pytest.raises(GateError, match="margin"):
        evaluate(run, thr, margin=0.9)


def test_memory_ratio_gets_no_margin() -> None:
    run = parse_run(_run(BASE, CONT))
    thr = Thresholds(memory={"k:Cont/Base": 1.04})
    mem = next(r for r in evaluate(run, thr, margin=3.0) if r.metric == "memory")
    assert mem.ratio == pytest.approx(1.05)
    assert mem.limit == 1.04
    assert mem.verdict == "FAIL"


def test_missing_baseline_is_a_clear_error() -> None:
    lone = _bench("k s1", "k", "Cont", ["Base"], 3.0)
    elsewhere = _bench("k s9", "k", "Base", [], 1.0)
    with pytest.raises(GateError, match=r"baseline 'Base'.*not in this group"):
        evaluate(parse_run(_run(lone, elsewhere)), Thresholds())


def test_unmatched_threshold_is_an_error() -> None:
    # a contender that stopped running (skipped, renamed) must not pass silently
    with pytest.raises(GateError, match="no measurement"):
        evaluate(parse_run(_run(BASE, CONT)), Thresholds(time={"k:Gone/Base": 2.0}))
    # a deliberate partial run may opt out
    assert evaluate(parse_run(_run(BASE, CONT)), Thresholds(time={"k:Gone/Base": 2.0}), subset=True)


def test_strict_requires_a_threshold_for_every_pair() -> None:
    with pytest.raises(GateError, match="--strict"):
        evaluate(parse_run(_run(BASE, CONT)), Thresholds(), strict=True)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"benchmarks": []}, "no 'benchmarks'"),
        (_run({"group": "g", "name": "x", "extra_info": {"name": "x"}, "stats": {}}), "no 'kind'"),
        (_run(_bench("g", "k", "A", [], 1.0), _bench("g", "k", "A", [], 2.0)), "two benchmarks named"),
        (_run({**BASE, "extra_info": {**BASE["extra_info"], "vs": "Base"}}), "must be a list"),
    ],
)
def test_malformed_runs(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(GateError, match=match):
        parse_run(bad)


def test_threshold_file_validation() -> None:
    assert parse_thresholds({"gate": {"quick_margin": 1.5}, "time": {"a:B/C": 2}}).quick_margin == 1.5
    for bad in ({"time": {"a:B/C": 0}}, {"time": {"a:B/C": "2"}}, {"time": {"nokey": 2.0}},
                {"gate": {"quick_margin": 0.5}}):
        with pytest.raises(GateError):
            parse_thresholds(bad)


TOML = """
[gate]
quick_margin = 1.2
[time]
"k:Cont/Base" = {t}
[memory]
"k:Cont/Base" = 1.1
"""


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j, t = _files(tmp_path, _run(BASE, CONT), TOML.format(t=1.6))
    assert main([j, "--thresholds", t]) == 0
    out = capsys.readouterr().out
    for word in ("contender", "baseline", "ratio", "threshold", "verdict", "Cont", "Base", "1.5", "pass"):
        assert word in out
    j, t = _files(tmp_path, _run(BASE, CONT), TOML.format(t=1.3))
    assert main([j, "--thresholds", t]) == 1
    assert "FAIL" in capsys.readouterr().out
    # --margin quick reads quick_margin from the file: 1.3 * 1.2 = 1.56 >= 1.5
    assert main([j, "--thresholds", t, "--margin", "quick"]) == 0
    assert main([j, "--thresholds", t, "--margin", "1.1"]) == 1
    rows_json = tmp_path / "rows.json"
    main([j, "--thresholds", t, "--margin", "quick", "--rows-json", str(rows_json)])
    assert {r["metric"] for r in json.loads(rows_json.read_text())} == {"time", "memory"}


def test_cli_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j, t = _files(tmp_path, _run(CONT), TOML.format(t=2.0))
    assert main([j, "--thresholds", t]) == 2
    assert "baseline 'Base'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json"), "--thresholds", t]) == 2
    j, _ = _files(tmp_path, _run(BASE, CONT), "")
    assert main([j, "--thresholds", str(tmp_path / "nope.toml")]) == 2
    assert main([j, "--thresholds", t, "--margin", "lots"]) == 2


def test_calibrate_takes_the_max_times_margin(tmp_path: Path) -> None:
    paths = []
    for i, med in enumerate((3.0, 3.2, 2.9)):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(_run(BASE, _bench("k s1", "k", "Cont", ["Base"], med, saved=1050))))
        paths.append(str(p))
    time_lines, mem_lines = propose(paths, margin=1.15)
    assert time_lines[0].startswith(f'"k:Cont/Base" = {math.ceil(1.6 * 1.15 * 100) / 100:g}')
    assert "identical in every run" in mem_lines[0]


# ---- saved_bytes: counts derived from shapes, not hard-coded ----

F32 = torch.finfo(torch.float32).bits // 8


def test_saved_bytes_layer_norm_is_input_affine_and_row_stats() -> None:
    rows, d = 6, 10
    ln = nn.LayerNorm(d)
    x = torch.randn(rows, d, requires_grad=True)
    # native_layer_norm saves the input, weight and bias, and the per-row mean and rstd (rows, 1).
    expected = (x.numel() + ln.weight.numel() + ln.bias.numel() + 2 * rows) * F32
    assert saved_bytes(ln, x) == expected
    assert any(t is x for t in saved_tensors(ln, x))


def test_saved_bytes_group_norm_is_input_weight_and_group_stats() -> None:
    n, c, h, w = 3, 4, 5, 6
    gn = nn.GroupNorm(c, c)
    x = torch.randn(n, c, h, w, requires_grad=True)
    # native_group_norm saves the input, the weight and per-(sample, group) mean and rstd; not the bias.
    assert saved_bytes(gn, x) == (x.numel() + gn.weight.numel() + 2 * n * c) * F32


def test_saved_bytes_deduplicates_storages() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    # x * x saves x twice: one storage
    assert saved_bytes(lambda a: a * a, x) == x.numel() * F32
    # two views of x are one storage, counted at its full size
    assert saved_bytes(lambda a: a[0] * a[1], x) == x.numel() * F32
    # exp saves its result, a new storage the size of x; the input is not saved
    t = saved_tensors(torch.exp, x)
    assert len(t) == 1 and t[0] is not x
    assert saved_bytes(torch.exp, x) == x.numel() * F32
    # nothing requires grad: nothing is saved
    assert saved_bytes(torch.exp, x.detach()) == 0


def test_saved_bytes_respects_dtype() -> None:
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert saved_bytes(lambda a: a * a, x) == x.numel() * 8


# ---- rln_verified.seed: the seed-style naive forms compute the seed's formulas ----


def _seed_formula_2d(x: torch.Tensor, lam: float, bayes: bool, eps: float = 1e-5) -> torch.Tensor:
    """The seed formulas written out elementwise in float64 with explicit loops over the 3x3 window."""
    x = x.double()
    h, w = x.shape[-2:]
    mu = x.mean(dim=(2, 3), keepdim=True)
    v = ((x - mu) ** 2).mean(dim=(2, 3), keepdim=True)

    def refl(i: int, size: int) -> int:
        return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)

    loc = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            win = torch.stack([x[:, :, refl(i + a, h), refl(j + b, w)] for a in (-1, 0, 1) for b in (-1, 0, 1)])
            loc[:, :, i, j] = (win**2).mean(0) - win.mean(0) ** 2
    t = lam * loc.mean(dim=(2, 3), keepdim=True) / (v + eps)
    sigma = (v + eps).sqrt()
    if bayes:
        return (x - mu) / (sigma * torch.exp(torch.log1p(t) - t / (1 + t)))
    return (x - mu) / (sigma * (1 + t))


@pytest.mark.parametrize("bayes", [False, True])
def test_seed_reference_matches_its_formulas(bayes: bool) -> None:
    from rln_verified.seed import SeedBayesianRLayerNorm2d, SeedRLayerNorm2d

    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    layer = (SeedBayesianRLayerNorm2d if bayes else SeedRLayerNorm2d)(3, lambda_init=0.3).double()
    torch.testing.assert_close(layer(x), _seed_formula_2d(x, 0.3, bayes))


def test_seed_reference_keeps_its_documented_defects() -> None:
    from rln_verified.seed import SeedBayesianRLayerNorm, SeedBayesianRLayerNorm2d

    # the clamp kills lambda's gradient outside [1e-3, 1]
    layer = SeedBayesianRLayerNorm2d(2, lambda_init=1.5)
    layer(torch.randn(2, 2, 6, 6)).square().sum().backward()
    assert layer.lambda_raw.grad is not None and float(layer.lambda_raw.grad) == 0.0
    # the "uncertainty" is a precision: larger on a smooth map than on the same map with noise added
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 32).repeat(32, 1).reshape(1, 1, 32, 32)
    noisy = smooth + 0.3 * torch.randn(smooth.shape, generator=g)
    with torch.no_grad():
        u_smooth = SeedBayesianRLayerNorm2d(1)(smooth, return_uncertainty=True)[1]
        u_noisy = SeedBayesianRLayerNorm2d(1)(noisy, return_uncertainty=True)[1]
    assert float(u_smooth.mean()) > float(u_noisy.mean())
    # last-dims form: one group per row, output zero-mean per row
    y = SeedBayesianRLayerNorm(16)(torch.randn(3, 4, 16))
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 4), atol=1e-6, rtol=0)


def test_targets_are_reported_not_gated() -> None:
    from rln_verified.bench._gate import target_report

    b2 = _bench("k s2", "k", "Base", [], 10.0)
    c2 = _bench("k s2", "k", "Cont", ["Base"], 12.0)
    thr = parse_thresholds({"time": {"k:Cont/Base": 1.6}, "target": {"k:Cont/Base": 1.3}})
    rows = evaluate(parse_run(_run(BASE, CONT, b2, c2)), thr)
    # both shapes pass the threshold (1.5 and 1.2 <= 1.6); the worst ratio, 1.5, misses the 1.3 target
    assert all(r.verdict == "pass" for r in rows if r.metric == "time")
    (line,) = target_report(rows, thr)
    assert "worst 1.5" in line and "target 1.3" in line and "NOT MET" in line
    thr_met = parse_thresholds({"time": {"k:Cont/Base": 1.6}, "target": {"k:Cont/Base": 1.5}})
    (line,) = target_report(evaluate(parse_run(_run(BASE, CONT, b2, c2)), thr_met), thr_met)
    assert line.endswith(": met")

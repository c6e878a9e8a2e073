"""The robustness and uncertainty study: does R-LayerNorm help on corrupted inputs, and is its ``u`` useful?

``python -m benchmarks.robustness.study --mode full|quick --out FILE.json`` runs it; ``python -m
benchmarks.robustness.report FILE.json`` writes ``docs/robustness.md`` and its plots. Needs the ``study`` extra
(scikit-learn for the bundled digits, mnist1d for its generator); nothing is downloaded.
"""

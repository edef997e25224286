"""Accuracy benchmarks: 3DPW / Human3.6M metrics, dataset readers, a synthetic dataset
and the evaluation loop behind ``hmrcli benchmark`` (docs/method.md §7)."""

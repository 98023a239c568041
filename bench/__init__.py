# SPDX-License-Identifier: Apache-2.0
"""zaya_kernels benchmarks: the shared harness (harness.py), the PyTorch baselines of PERF.md
(baselines.py), reports and comparisons of result files (report.py), and one bench_<op>.py per op
family. Results live under bench/results/<device>/; `zaya-kernels bench` runs the suites."""

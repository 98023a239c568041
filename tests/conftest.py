# SPDX-License-Identifier: Apache-2.0
"""Test tiers (DESIGN.md §6): CPU by default; `-m gpu` on the H200. A gpu test is skipped, never
passed, where no GPU or no compiled kernel is present. `--require-gpu` turns every skip of a gpu test
into a failure, whatever raised it (no GPU here, a kernel missing from the build, a pytest.skip inside
the test or a fixture), so that a GPU run cannot report success without running its tests."""
import pytest
import torch

import zaya_kernels

pytest_plugins = ["pytester"]  # tests/test_require_gpu.py runs pytest on small test files


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true",
                     help="fail (instead of skip) gpu tests that cannot run here")


def gpu_unavailable_reason() -> str | None:
    """Why the gpu tests cannot run here, or None when they can."""
    if torch.cuda.is_available() and zaya_kernels.compiled_backend() in ("cuda", "rocm"):
        return None
    return "needs a GPU and zaya_kernels built for it"


def mark_gpu_items(items, reason: str | None) -> None:
    """Without a GPU every gpu test is skipped (and, under --require-gpu, failed by the hook below)."""
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_modifyitems(config, items):
    mark_gpu_items(items, gpu_unavailable_reason())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Under --require-gpu a skipped gpu test is a failed one. tryfirst: the outermost wrapper, so this
    sees the report after pytest's own skip/xfail handling has shaped it."""
    report = yield
    if report.skipped and "gpu" in item.keywords and item.config.getoption("--require-gpu"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"--require-gpu: this gpu test did not run: {reason}"
    return report


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: inputs are random, reproducible, never zeros."""
    return torch.Generator().manual_seed(0x2A7A)


@pytest.fixture
def cuda_gen():
    return torch.Generator(device="cuda").manual_seed(0x2A7A)

# SPDX-License-Identifier: Apache-2.0
"""The torch release check at import (issue 16): zaya_kernels._C links against torch's C++ API, which has no
stable ABI between releases, so the package refuses to import under another torch release than the one it was
built against (zaya_kernels/_build_config.py TORCH_VERSION, written by setup.py), naming both versions.
major.minor.patch must be equal; the local tag (+cu130, +cpu) is not compared. The wheel itself is built and
smoke-tested in a fresh venv by tools/wheel_smoke.sh (a CI stage of .ci/run)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import zaya_kernels
from zaya_kernels._backend import build_config


def test_mismatched_release_names_both_versions():
    with pytest.raises(ImportError, match=r"built against torch 2\.14\.1\+cu130, but torch 2\.11\.0\+cu130 is "
                                          r"installed: install torch==2\.14\.1"):
        zaya_kernels._check_torch("2.14.1+cu130", "2.11.0+cu130")
    for running in ("2.14.0", "2.15.1", "3.14.1"):  # patch, minor and major releases all count
        with pytest.raises(ImportError, match=running.replace(".", r"\.")):
            zaya_kernels._check_torch("2.14.1", running)


def test_same_release_or_unbuilt_passes():
    zaya_kernels._check_torch("2.14.1+cu130", "2.14.1+cpu")  # the local tag is not compared
    zaya_kernels._check_torch("2.14.1", "2.14.1")
    zaya_kernels._check_torch(None, "2.99.0")                # nothing built: the reference path still imports


@pytest.mark.skipif(build_config() is None, reason="zaya_kernels was never built: no _build_config.py to check")
def test_import_under_a_patched_torch_version_fails(tmp_path):
    """A fresh interpreter whose torch reports another release: `import zaya_kernels` raises the named error."""
    built = build_config().TORCH_VERSION
    code = "import torch; torch.__version__ = '2.99.0+cpu'; import zaya_kernels"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(Path(zaya_kernels.__file__).parents[1])})
    assert result.returncode != 0
    assert f"zaya_kernels was built against torch {built}, but torch 2.99.0+cpu is installed" in result.stderr, \
        result.stderr[-2000:]

# SPDX-License-Identifier: Apache-2.0
"""`--require-gpu` (tests/conftest.py) on small test files run by pytester, with the GPU's presence
simulated both ways, so that CI's GPU-less machine checks it: without the flag a gpu test that cannot
run is skipped; with it, that test fails, the run's exit status is non-zero, and so is every gpu test
that skips itself (a kernel missing from the build, a pytest.skip in a fixture). CPU tests are never
affected."""
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

TESTS = """
import pytest

@pytest.fixture
def no_kernel():
    pytest.skip("no device kernel in this build")

@pytest.mark.gpu
def test_gpu_runs():
    pass

@pytest.mark.gpu
def test_gpu_skips_itself():
    pytest.skip("no device kernel in this build")

@pytest.mark.gpu
def test_gpu_fixture_skips(no_kernel):
    pass

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="a skipif on a gpu test")
def test_gpu_skipif():
    pass

def test_cpu_runs():
    pass

def test_cpu_skips_itself():
    pytest.skip("a CPU test may skip")
"""


def conftest_with_gpu(present: bool) -> str:
    """The repository's hooks, with only the GPU detection replaced."""
    reason = None if present else "needs a GPU and zaya_kernels built for it"
    return f"""
from tests.conftest import mark_gpu_items, pytest_addoption, pytest_runtest_makereport  # noqa: F401

def pytest_collection_modifyitems(config, items):
    mark_gpu_items(items, {reason!r})
"""


@pytest.fixture
def suite(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile(test_suite=TESTS)
    return pytester


def outcomes(result) -> dict:
    """passed / skipped / failed counts; a test failed in its setup phase (a skip mark, a fixture) is
    reported by pytest as an error, which fails the run the same way, so it counts as failed here."""
    counts = result.parseoutcomes()
    out = {k: counts[k] for k in ("passed", "skipped", "xfailed", "xpassed") if counts.get(k)}
    failed = counts.get("failed", 0) + counts.get("errors", 0) + counts.get("error", 0)
    return {**out, "failed": failed} if failed else out


def test_without_a_gpu_gpu_tests_skip(suite):
    suite.makeconftest(conftest_with_gpu(False))
    result = suite.runpytest("-p", "no:cacheprovider", "-rs")
    assert result.ret == 0
    assert outcomes(result) == {"passed": 1, "skipped": 5}
    result.stdout.fnmatch_lines(["*needs a GPU and zaya_kernels built for it*"])


def test_without_a_gpu_require_gpu_fails_every_gpu_test(suite):
    suite.makeconftest(conftest_with_gpu(False))
    result = suite.runpytest("-p", "no:cacheprovider", "--require-gpu")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"passed": 1, "skipped": 1, "failed": 4}
    result.stdout.fnmatch_lines(["*--require-gpu: this gpu test did not run:*needs a GPU*"])


def test_with_a_gpu_require_gpu_fails_gpu_tests_that_skip_themselves(suite):
    suite.makeconftest(conftest_with_gpu(True))
    result = suite.runpytest("-p", "no:cacheprovider", "--require-gpu", "-m", "gpu")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {"passed": 1, "failed": 3}
    result.stdout.fnmatch_lines_random(["*--require-gpu: this gpu test did not run:*no device kernel in this build*",
                                        "*--require-gpu: this gpu test did not run:*a skipif on a gpu test*"])


def test_with_a_gpu_and_no_flag_skips_stay_skips(suite):
    suite.makeconftest(conftest_with_gpu(True))
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0
    assert outcomes(result) == {"passed": 2, "skipped": 4}


def test_the_repository_conftest_on_this_machine(pytester):
    """The repository's hooks unchanged, GPU detection included: a gpu test runs where a GPU and the
    kernels are present; elsewhere it skips, and fails under --require-gpu."""
    from tests.conftest import gpu_unavailable_reason

    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makeconftest("from tests.conftest import pytest_addoption, pytest_collection_modifyitems, "
                          "pytest_runtest_makereport  # noqa: F401\n")
    pytester.makepyfile(test_one="import pytest\n\n@pytest.mark.gpu\ndef test_gpu():\n    pass\n")
    plain = pytester.runpytest("-p", "no:cacheprovider")
    required = pytester.runpytest("-p", "no:cacheprovider", "--require-gpu")
    if gpu_unavailable_reason() is None:
        assert outcomes(plain) == outcomes(required) == {"passed": 1}
    else:
        assert outcomes(plain) == {"skipped": 1} and plain.ret == 0
        assert outcomes(required) == {"failed": 1} and required.ret == pytest.ExitCode.TESTS_FAILED

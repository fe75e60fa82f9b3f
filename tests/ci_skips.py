"""Which test skips CI accepts: with ``DFER_CI=1`` in the environment (`.ci/run` sets it) a
skip is a failure unless its reason says the machine has no CUDA device (or has one, for a
CPU-only check) or the run lacks, or has, root privileges. A missing test dependency (jq,
jsonschema, Ray, setpriv, `script`, a pseudo-terminal) or a Ray instance that does not
start in time then fails the run instead of passing it with less tested.

tests/conftest.py installs the two hooks below; elsewhere a skip stays a skip.
"""
from __future__ import annotations

import os

import pytest

# Reasons (their beginnings) a test may skip with in CI. A skip whose reason starts
# otherwise fails there: say here why a new one cannot be provided by CI before adding it.
CI_MAY_SKIP = (
    "needs a CUDA device",        # CI machines have no GPU (conftest's `gpu` marker, CUDA batching)
    "this GPU has no bfloat16",   # a GPU without it
    "this machine has CUDA",      # a check of what happens without CUDA, on a GPU machine
    "needs root",                 # mounting a small filesystem
    "root reads any file",        # a permission check that no file can fail for root
)


def ci_enforced() -> bool:
    return os.environ.get("DFER_CI") == "1"


def skip_reason(report) -> str:
    """The reason of a skip report, as `pytest -rs` shows it."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def ci_may_skip(reason: str) -> bool:
    return reason.startswith(CI_MAY_SKIP)


def _fail_skip(report) -> None:
    reason = skip_reason(report)
    if ci_may_skip(reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under DFER_CI=1, which allows only CUDA and root skips (tests/ci_skips.py): "
                       f"{reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if ci_enforced() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a module-level skip (pytest.importorskip at the top of a file): failed, it is an error
    # during collection, which stops the run there
    outcome = yield
    report = outcome.get_result()
    if ci_enforced() and report.skipped:
        _fail_skip(report)

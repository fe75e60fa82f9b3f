"""DFER_CI=1 turns a skip into a failure unless it is a CUDA or root one (tests/ci_skips.py):
checked on a small test folder run by a pytest of its own, with and without the variable."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CASES = textwrap.dedent('''
    import pytest

    def test_runs():
        pass

    @pytest.mark.skipif(True, reason="needs a CUDA device")
    def test_cuda_marker():
        pass

    def test_cuda_inside():
        pytest.skip("this GPU has no bfloat16")

    def test_root():
        pytest.skip("needs root to mount a tmpfs")

    def test_missing_tool():
        pytest.skip("jq is not installed, so the recipes cannot be run")

    @pytest.mark.skipif(True, reason="needs pseudo-terminals (the pty module)")
    def test_missing_module_marker():
        pass

    def test_missing_package():
        pytest.importorskip("dfer_no_such_package")

    @pytest.fixture
    def ray_instance():
        pytest.skip("a local Ray could not start on this machine: timed out")

    def test_ray_fixture(ray_instance):
        pass

    @pytest.mark.xfail(reason="a known failure", strict=True)
    def test_known_failure():
        assert False
''')


def run_pytest(folder: Path, ci: bool) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "DFER_CI"}
    if ci:
        env["DFER_CI"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(folder)],
                       cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from ci_skips import pytest_make_collect_report, pytest_runtest_makereport\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")   # its own rootdir, not the project's
    (tmp_path / "test_cases.py").write_text(CASES)
    return tmp_path


def outcomes(output: str) -> dict[str, str]:
    """{test name: PASSED / SKIPPED / FAILED / ERROR / XFAIL} from the -rA summary."""
    got = {}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "SKIPPED", "FAILED", "ERROR", "XFAIL") and "::" in rest:
            got[rest.split("::", 1)[1].split(" ", 1)[0]] = word
        elif word == "SKIPPED" and rest.startswith("[1] test_cases.py:"):
            # -rA shows skips as SKIPPED [1] file:line: reason, without the name
            got.setdefault("skips", []).append(rest.split(": ", 1)[1])
    return got


def test_without_dfer_ci_every_skip_stays_a_skip(folder):
    rc, out = run_pytest(folder, ci=False)
    assert rc == 0, out
    assert "1 passed, 7 skipped, 1 xfailed" in out, out


def test_under_dfer_ci_only_cuda_and_root_skips_stay_skips(folder):
    rc, out = run_pytest(folder, ci=True)
    assert rc == 1, out
    got = outcomes(out)
    assert sorted(got.pop("skips")) == ["needs a CUDA device", "needs root to mount a tmpfs",
                                        "this GPU has no bfloat16"], out
    assert got == {"test_runs": "PASSED", "test_missing_tool": "FAILED", "test_missing_package": "FAILED",
                   "test_missing_module_marker": "ERROR", "test_ray_fixture": "ERROR",
                   "test_known_failure": "XFAIL"}, out
    assert "skipped under DFER_CI=1, which allows only CUDA and root skips (tests/ci_skips.py): " \
           "jq is not installed, so the recipes cannot be run" in out, out
    assert "could not import 'dfer_no_such_package'" in out and "a local Ray could not start" in out, out


def test_under_dfer_ci_a_skipped_module_stops_the_run_at_collection(folder):
    (folder / "test_needs_a_package.py").write_text(
        "import pytest\npkg = pytest.importorskip('dfer_no_such_package')\n\ndef test_x():\n    pass\n")
    rc, out = run_pytest(folder, ci=False)
    assert rc == 0 and "1 passed, 8 skipped, 1 xfailed" in out, out
    rc, out = run_pytest(folder, ci=True)
    assert rc == 2 and "1 error" in out and "Interrupted" in out, out
    assert "ERROR test_needs_a_package.py" in out and "could not import 'dfer_no_such_package'" in out, out


def test_the_suite_installs_the_hooks_and_ci_sets_the_variable(request):
    import ci_skips

    (conftest,) = [p for p in request.config.pluginmanager.get_plugins()
                   if getattr(p, "__file__", None) == str(TESTS / "conftest.py")]
    assert conftest.pytest_runtest_makereport is ci_skips.pytest_runtest_makereport
    assert conftest.pytest_make_collect_report is ci_skips.pytest_make_collect_report
    run = (TESTS.parent / ".ci" / "run").read_text().splitlines()
    assert "export DFER_CI=1" in run and run.index("export DFER_CI=1") < run.index("make test")

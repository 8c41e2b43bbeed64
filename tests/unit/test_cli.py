from pathlib import Path

import pytest
from click.testing import CliRunner

from colo_proxy.cli import main


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "diff" in result.output


def test_diff_rejects_non_finite_latency(tmp_path: Path) -> None:
    # nan passes every range check (each comparison with it is false): it used to be
    # accepted, never completed a checkpoint and wrote NaN into the JSON.
    for value in ("nan", "inf", "-inf", "NaN"):
        result = CliRunner().invoke(main, ["diff", "--checkpoint-latency", value,
                                           str(tmp_path / "a"), str(tmp_path / "b")])
        assert result.exit_code == 2, (value, result.output)
        assert "--checkpoint-latency" in result.stderr and "finite" in result.stderr
        assert "Traceback" not in result.stderr


def test_status_without_the_module_gives_advice_that_works_here() -> None:
    # The "colo" family is not registered on a host where nf_colo is not loaded; the old
    # advice ("run colo-proxy load") cannot work on a kernel without module support.
    if Path("/sys/module/nf_colo").exists():
        pytest.skip("nf_colo is loaded on this kernel")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("colo-proxy: error: module nf_colo is not loaded")
    if Path("/proc/modules").exists():
        assert "colo-proxy load" in line
    else:
        assert "cannot load modules" in line and "run `colo-proxy load`" not in line
        assert "scripts/guest-test.sh build 6.1" in line and "docs/development.md" in line

"""Bad command lines give one line on stderr and exit 2 (README: "Every command prints one
clear line and exits non-zero on bad input"), not click's four-line usage block."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from colo_proxy.cli import main


@pytest.mark.parametrize(("args", "text"), [
    (["demo", "--duration", "nan"], "Invalid value for '--duration': 'nan' is not a finite"),
    (["run", "nfqueue", "--bogus"], "No such option '--bogus'"),
    (["run", "qemu-socket", "--compare-timeout", "inf"], "'inf' is not a finite number"),
    (["bogus"], "No such command 'bogus'"),
    (["--nope"], "No such option '--nope'"),
    (["diff", "only-one.pcap"], "Missing argument 'SECONDARY'"),
    (["mirror", "status", "--tap", "tap0"], "Missing option '--fwd'"),
    (["mirror", "apply", "--fwd", "fwd0"], "Missing option '--tap'"),
    (["mirror", "remove", "--tap", "tap0", "--json"], "No such option '--json'"),
])
def test_usage_errors_are_one_line(args: list[str], text: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("colo-proxy: error: ")
    assert text in lines[0]
    assert "--help" in lines[0]
    assert "Traceback" not in result.output


def test_no_arguments_still_show_the_help() -> None:
    result = CliRunner().invoke(main, ["run"])
    assert "nfqueue" in result.output and "qemu-socket" in result.output

"""``run nfqueue`` / ``run qemu-socket`` option validation (no root needed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from colo_proxy.cli import main


@pytest.mark.parametrize(("args", "message"), [
    ([], "needs --pvm-if, --fwd-if"),
    (["--pvm-if", "a", "--fwd-if", "b", "--queue-primary", "3", "--queue-secondary", "3"],
     "must differ"),
    (["--pvm-if", "a", "--fwd-if", "b", "--checkpoint", "cmd"], "needs --checkpoint-cmd"),
    (["--pvm-if", "a", "--fwd-if", "a"], "--pvm-if and --fwd-if must differ"),
    (["--pvm-if", "a", "--fwd-if", "b", "--checkpoint-cmd", "true", "--checkpoint", "flush"],
     "only used with --checkpoint cmd"),
    (["--pvm-if", "a", "--fwd-if", "b", "--stats-interval", "nan"], "not a finite number"),
    (["--pvm-if", "a", "--fwd-if", "b", "--compare-timeout", "inf"], "not a finite number"),
    # One datapath's options are not accepted by another.
    (["--pvm-if", "a", "--fwd-if", "b", "--outdev", "tcp:127.0.0.1:1"], "No such option"),
])
def test_bad_options_are_one_line_input_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["run", "nfqueue", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_names_nfqueue_options() -> None:
    result = CliRunner().invoke(main, ["run", "nfqueue", "--help"])
    assert result.exit_code == 0
    for option in ("--queue-maxlen", "--fail-closed", "--checkpoint-cmd", "--events"):
        assert option in result.output
    assert "--outdev" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    ([], "needs --primary-in, --secondary-in, --outdev"),
    (["--pvm-if", "x"], "No such option"),
    (["--primary-in", "tcp:127.0.0.1:1", "--secondary-in", "tcp:127.0.0.1:2",
      "--outdev", "tcp:127.0.0.1:3", "--checkpoint", "notify"], "needs --notify-dev"),
    (["--primary-in", "tcp:127.0.0.1:1", "--secondary-in", "tcp:127.0.0.1:2",
      "--outdev", "tcp:127.0.0.1:3", "--expired-scan-cycle", "nan"], "not a finite number"),
    (["--primary-in", "tcp:no-such-host.invalid:1", "--secondary-in", "tcp:127.0.0.1:2",
      "--outdev", "tcp:127.0.0.1:3"], "--primary-in tcp:no-such-host.invalid:1: cannot resolve"),
])
def test_qemu_socket_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["run", "qemu-socket", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_run_lists_the_datapaths() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    assert "nfqueue" in result.output and "qemu-socket" in result.output


def test_qemu_socket_bind_failure_names_option_and_endpoint() -> None:
    result = CliRunner().invoke(main, [
        "run", "qemu-socket", "--primary-in", "tcp:127.0.0.1:1",
        "--secondary-in", "tcp:127.0.0.1:2", "--outdev", "unix:/nonexistent-colot/o.sock,server"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "colo-proxy: error: --outdev unix:/nonexistent-colot/o.sock,server: cannot listen: "
        "No such file or directory")


def test_nfqueue_missing_interface_is_one_line_input_error() -> None:
    # Checked before any queue is bound or rule installed (no root needed to get here).
    result = CliRunner().invoke(main, ["run", "nfqueue", "--pvm-if", "colot-nosuch0",
                                       "--fwd-if", "lo", "--rules", "none"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "colo-proxy: error: --pvm-if colot-nosuch0: no such interface")

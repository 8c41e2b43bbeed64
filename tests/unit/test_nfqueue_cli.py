"""``run --datapath nfqueue`` option validation (no root needed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from colo_proxy.cli import main


@pytest.mark.parametrize(("args", "message"), [
    ([], "needs --pvm-if, --fwd-if"),
    (["--pvm-if", "a", "--fwd-if", "b", "--queue-primary", "3", "--queue-secondary", "3"],
     "must differ"),
    (["--pvm-if", "a", "--fwd-if", "b", "--checkpoint", "cmd"], "needs --checkpoint-cmd"),
])
def test_bad_options_are_one_line_input_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["run", "--datapath", "nfqueue", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_names_nfqueue_options() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--queue-maxlen", "--fail-closed", "--checkpoint-cmd", "--events"):
        assert option in result.output

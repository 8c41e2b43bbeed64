from click.testing import CliRunner

from colo_proxy.cli import main


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "diff" in result.output

import click
import pytest
from click.testing import CliRunner

from colo_proxy.cli.types import FINITE_FLOAT, finite_float


@click.command()
@click.option("--any", "any_", type=FINITE_FLOAT, default=0.0)
@click.option("--pos", type=finite_float(min=1.0), default=1.0)
def cmd(any_: float, pos: float) -> None:
    click.echo(f"{any_} {pos}")


@pytest.mark.parametrize("args", [["--any", "nan"], ["--any", "inf"], ["--any", "-inf"],
                                  ["--pos", "nan"], ["--pos", "Infinity"], ["--pos", "0.5"],
                                  ["--any", "x"]])
def test_rejects_non_finite_and_out_of_range(args: list[str]) -> None:
    result = CliRunner().invoke(cmd, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_accepts_finite() -> None:
    result = CliRunner().invoke(cmd, ["--any", "-2.5", "--pos", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "-2.5 3.0"

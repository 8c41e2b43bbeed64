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


# Distribution -> the module it provides, for the runtime dependencies.
_PROVIDES = {"click": "click", "rich": "rich", "pyroute2": "pyroute2", "qemu.qmp": "qemu",
             "pip-nftables": "nftables", "netfilterqueue": "netfilterqueue",
             "prometheus-client": "prometheus_client"}
_NOT_YET_IMPORTED: set[str] = set()  # declared dependencies nothing imports yet
_OPTIONAL = {"plot": {"matplotlib"}}
"""Runtime extras: modules the package imports only when the extra is installed."""


def _third_party_imports() -> set[str]:
    import ast
    import sys

    root = Path(__file__).resolve().parents[2] / "colo_proxy"
    found: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and not node.level else [])
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in sys.stdlib_module_names and n != "colo_proxy"}


def test_runtime_dependencies_are_what_the_package_imports() -> None:
    import re
    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    deps = {re.split(r"[<>=!~ \[]", d)[0] for d in meta["project"]["dependencies"]}
    extras = meta["project"]["optional-dependencies"]
    optional = set().union(*_OPTIONAL.values())
    for extra, modules in _OPTIONAL.items():
        assert {re.split(r"[<>=!~ \[]", d)[0] for d in extras[extra]} == modules
    imported = _third_party_imports() - optional
    assert imported <= {_PROVIDES[d] for d in deps if d in _PROVIDES}, imported
    assert deps <= set(_PROVIDES)
    unused = {d for d in deps if _PROVIDES[d] not in imported}
    assert unused == _NOT_YET_IMPORTED - {d for d in _NOT_YET_IMPORTED
                                           if _PROVIDES[d] in imported}
    for test_only in ("scapy", "pyyaml", "fnfqueue"):
        assert test_only not in deps

"""colo-proxy config check: one line per problem, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from colo_proxy.agent.config import ConfigErrors, load, parse
from colo_proxy.cli import main

KEY = "a" * 64


def _key(tmp_path: Path, mode: int = 0o600, text: str = KEY) -> Path:
    path = tmp_path / "pair.key"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def _primary(key: Path) -> str:
    return f"""
[agent]
metrics = "127.0.0.1:9810"

[vm.web]
role = "primary"
qmp = "/run/colo/web-agent.qmp"
listen = "127.0.0.1:7800"
peer = "127.0.0.1:7801"
key_file = "{key}"
passthrough = ["proto=tcp,port=22"]

[vm.web.datapath]
kind = "qemu-socket"
primary_in = "tcp:127.0.0.1:9001"
secondary_in = "tcp:127.0.0.1:9004,server"
outdev = "tcp:127.0.0.1:9005"
vnet_hdr = ["all"]

[vm.web.heartbeat]
interval_ms = 100
misses = 4

[vm.web.timeouts]
checkpoint_stop_s = 0.5
"""


def test_valid_primary(tmp_path: Path) -> None:
    cfg = parse(_primary(_key(tmp_path)), "host.toml")
    (vm,) = cfg.vms
    assert vm.role == "primary"
    assert vm.heartbeat.interval_ms == 100
    assert vm.heartbeat.dead_after_s == pytest.approx(0.4)
    assert vm.timeouts.checkpoint_stop_s == 0.5
    assert vm.timeouts.qmp_command_s == 3.0
    assert vm.datapath is not None
    assert vm.datapath.vnet_hdr == {"primary_in", "secondary_in", "outdev"}
    assert vm.datapath.secondary_in.server
    assert len(vm.passthrough) == 1
    assert vm.read_key() == KEY.encode()
    assert cfg.warnings == ()


def test_valid_secondary(tmp_path: Path) -> None:
    text = f"""
[vm.web]
role = "secondary"
qmp = "/run/colo/web-agent.qmp"
listen = "10.0.0.2:7800"
peer = "10.0.0.1:7800"
witness = "10.0.0.254:22"
key_file = "{_key(tmp_path)}"
redirectors = ["red0", "red1"]
failover_before = [{{execute = "nbd-server-stop"}},
                   {{execute = "human-monitor-command", arguments = {{command-line = "info"}}}}]
"""
    cfg = parse(text, "sec.toml")
    (vm,) = cfg.vms
    assert vm.name == "web"
    assert vm.failover_before == (("nbd-server-stop", {}),
                                  ("human-monitor-command", {"command-line": "info"}))
    assert vm.redirectors == ("red0", "red1")
    assert vm.witness is not None and vm.witness.port == 22
    assert any("not loopback" in w for w in cfg.warnings)
    assert not any("split brain" in w for w in cfg.warnings)
    cfg = parse(text.replace('witness = "10.0.0.254:22"\n', ""), "sec.toml")
    assert any("witness: not set" in w and "split brain" in w for w in cfg.warnings)


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse(text, "f.toml")
    return [f"{p.key}: {p.reason}" for p in info.value.problems]


def test_every_problem_reported(tmp_path: Path) -> None:
    text = f"""
[vm.web]
role = "primry"
qmp = "relative.sock"
listen = "127.0.0.1"
peer = "127.0.0.1:99999"
key_file = "{_key(tmp_path, mode=0o644)}"
colour = "blue"
passthrough = ["proto=bogus"]
failover_before = [{{run = "x"}}, "nbd-server-stop"]

[vm.web.heartbeat]
interval_ms = "fast"
misses = 1
"""
    got = _problems(text)
    assert any(p.startswith("vm.web.role: 'primry' is not one of") for p in got)
    assert any(p.startswith("vm.web.qmp:") for p in got)
    assert any(p.startswith("vm.web.listen:") and "HOST:PORT" in p for p in got)
    assert any(p.startswith("vm.web.peer:") and "bad port" in p for p in got)
    assert any(p.startswith("vm.web.key_file:") and "0644" in p for p in got)
    assert "vm.web.colour: unknown key" in got
    assert "vm.web.failover_before[0].run: unknown key" in got
    assert "vm.web.failover_before[0].execute: missing" in got
    assert any(p.startswith("vm.web.failover_before[1]: must be a table") for p in got)
    assert any(p.startswith("vm.web.passthrough[0]:") for p in got)
    assert any(p.startswith("vm.web.heartbeat.interval_ms: must be an integer") for p in got)
    assert any(p.startswith("vm.web.heartbeat.misses:") and "out of range" in p for p in got)


def test_primary_needs_datapath_secondary_needs_redirectors(tmp_path: Path) -> None:
    key = _key(tmp_path)
    base = f"""
[vm.a]
role = "ROLE"
qmp = "/run/a.qmp"
listen = "127.0.0.1:7800"
peer = "127.0.0.1:7801"
key_file = "{key}"
"""
    assert "vm.a.datapath: missing table" in _problems(base.replace("ROLE", "primary"))
    assert any(p.startswith("vm.a.redirectors:")
               for p in _problems(base.replace("ROLE", "secondary")))


def test_bad_endpoints_and_short_key(tmp_path: Path) -> None:
    text = _primary(_key(tmp_path, text="short")).replace(
        '"tcp:127.0.0.1:9005"', '"udp:1.2.3.4:5"').replace('["all"]', '["everything"]')
    got = _problems(text)
    assert any(p.startswith("vm.web.datapath.outdev:") and "unknown transport" in p
               for p in got)
    assert any(p.startswith("vm.web.datapath.vnet_hdr[0]:") for p in got)
    assert any(p.startswith("vm.web.key_file:") and "at least 32" in p for p in got)


def test_toml_syntax_and_missing_file(tmp_path: Path) -> None:
    assert _problems("[vm.web\nrole=1")[0].startswith("(toml):")
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path / "nope.toml")
    assert "cannot read" in str(info.value)


def test_cli_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(_primary(_key(tmp_path)))
    runner = CliRunner()
    res = runner.invoke(main, ["config", "check", str(good)])
    assert res.exit_code == 0, res.output
    assert "ok: 1 VM(s): web (primary)" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text(_primary(_key(tmp_path)).replace('role = "primary"', "role = 3"))
    res = runner.invoke(main, ["config", "check", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip() == f"{bad}: vm.web.role: must be a string, not an integer"
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["config", "check", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1


def test_non_loopback_metrics_is_one_warning_line(tmp_path: Path) -> None:
    text = _primary(_key(tmp_path))
    assert parse(text, "host.toml").warnings == ()          # 127.0.0.1:9810: none
    assert parse(text.replace('metrics = "127.0.0.1:9810"', 'metrics = "[::1]:9810"'),
                 "host.toml").warnings == ()
    cfg = parse(text.replace('metrics = "127.0.0.1:9810"', 'metrics = "0.0.0.0:9810"'),
                "host.toml")
    assert cfg.warnings == ("host.toml: agent.metrics: 0.0.0.0:9810 is not loopback; the "
                            "metrics endpoint has no authentication",)


def test_cli_check_warns_about_a_plain_non_loopback_endpoint(tmp_path: Path) -> None:
    """config check prints the warning the datapath logs at start, one line per endpoint."""
    good = _primary(_key(tmp_path))
    runner = CliRunner()
    plain = tmp_path / "plain.toml"
    plain.write_text(good.replace('"tcp:127.0.0.1:9004,server"', '"tcp:10.0.0.1:9004,server"')
                     .replace('"tcp:127.0.0.1:9001"', '"tcp:10.0.0.1:9001"'))
    res = runner.invoke(main, ["config", "check", str(plain)])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == [
        f"warning: {plain}: vm.web.datapath.primary_in: tcp:10.0.0.1:9001 is not a loopback "
        "address and has no TLS: anyone who reaches it can impersonate the peer of this "
        "link (add tls-creds=DIR, see docs/security.md)",
        f"warning: {plain}: vm.web.datapath.secondary_in: tcp:10.0.0.1:9004,server is not a "
        "loopback address and has no TLS: anyone who reaches it can take this link (add "
        "tls-creds=DIR, see docs/security.md)"]
    assert "ok: 1 VM(s)" in res.stdout
    tls = tmp_path / "tls.toml"
    tls.write_text(good.replace('"tcp:127.0.0.1:9004,server"',
                                '"tcp:10.0.0.1:9004,server,tls-creds=/etc/colo/tls"'))
    res = runner.invoke(main, ["config", "check", str(tls)])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""                             # TLS, and loopback: no warning


def test_the_documented_layout_parses_and_is_the_secure_one() -> None:
    import textwrap

    import colo_proxy.agent.config as module
    from colo_proxy.agent.config import endpoint_warnings

    assert module.__doc__ is not None
    layout = textwrap.dedent(module.__doc__.split("Layout::", 1)[1])
    cfg = parse(layout, "layout.toml", check_files=False)
    (vm,) = cfg.vms
    assert vm.datapath is not None and vm.datapath.secondary_in.tls
    assert endpoint_warnings(cfg) == []

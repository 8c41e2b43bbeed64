"""``colo-proxy status`` against the real module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from colo_env import insmod, module_back, rmmod

from colo_proxy.nl import ColoClient, Mode, Reason

pytestmark = pytest.mark.kernel

CLI = str(Path(__file__).resolve().parents[2] / ".venv/bin/colo-proxy")


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "status", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_status_shows_nodes_and_counters(ns: str) -> None:
    with ColoClient(netns=ns) as client:
        primary = client.proxy_init(Mode.PRIMARY, index=3)
        client.proxy_init(Mode.SECONDARY, index=9)
        client.request_checkpoint(3, Reason.TIMEOUT)
        client.request_checkpoint(3, Reason.TIMEOUT)

        res = status("--json", "--netns", ns)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data == {"nodes": [n.as_dict() for n in client.dump()]}
        first = data["nodes"][0]
        assert (first["index"], first["mode"], first["state"], first["owner"]) == (
            3, "primary", "checkpoint-pending", primary.owner)
        assert first["stats"]["requests-suppressed"] == 1

        res = status("--netns", ns)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].split()[:3] == ["index", "mode", "state"]
        assert [line.split()[:3] for line in lines[1:]] == [
            ["3", "primary", "checkpoint-pending"], ["9", "secondary", "active"]]

    res = status("--netns", ns)
    assert (res.returncode, res.stdout.strip()) == (0, "no nodes in this network namespace")


def test_status_without_module(colo_ko: Path) -> None:
    insmod(colo_ko)
    with module_back(colo_ko):
        assert rmmod().returncode == 0
        res = status()
        assert res.returncode == 1
        # A kernel that loads modules: the advice is colo-proxy load (cli/status.py).
        assert res.stderr.strip() == (
            "colo-proxy: error: module nf_colo is not loaded: run `colo-proxy load` "
            "(after `colo-proxy install`)")
        assert res.stdout == ""

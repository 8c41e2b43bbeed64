"""``colo-proxy status --agent FILE``: the agent's figures from its status file."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ColoError


def show(path: str, as_json: bool) -> str:
    try:
        with open(path) as src:
            data: dict[str, Any] = json.load(src)
    except OSError as exc:
        raise ColoError(f"agent status {path}: {exc.strerror or exc} "
                        "(is the agent running with agent.status_file set?)") from None
    except ValueError as exc:
        raise ColoError(f"agent status {path}: not JSON: {exc}") from None
    if as_json:
        return json.dumps(data, indent=2, sort_keys=True)
    lines = []
    for name, f in sorted(data.get("agent", {}).items()):
        cps = f.get("checkpoints", {})
        lines.append(
            f"{name}: {f.get('role')} in_colo={f.get('in_colo')} "
            f"failed_over={f.get('failed_over')} qemu_healthy={f.get('qemu_healthy')} "
            f"peer_silent={f.get('peer', {}).get('silent')} "
            f"checkpoints={cps.get('requested', 0)}+{cps.get('periodic', 0)} "
            f"released={f.get('frames_released', 0)} held={f.get('frames_held', 0)} "
            f"heartbeats_refused={sum(f.get('heartbeats_refused', {}).values())}")
    return "\n".join(lines) or "no VMs"

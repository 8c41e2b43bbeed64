"""Life cycle of the nfnetlink_colo kernel module: build and install, load, unload."""

from __future__ import annotations

MODULE = "nfnetlink_colo"
"""Name of the module (as in /proc/modules and /sys/module)."""

"""Life cycle of the nf_colo kernel module: build and install, load, unload."""

from __future__ import annotations

MODULE = "nf_colo"
"""Name of the module (as in /proc/modules and /sys/module)."""

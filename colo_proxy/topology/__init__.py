"""Namespace topology for the userspace datapaths and the demo.  See docs/datapaths.md."""

from .build import Topology, build

__all__ = ["Topology", "build"]

"""colo-proxy: the network side of COLO VM replication."""

__version__ = "0.1.0"

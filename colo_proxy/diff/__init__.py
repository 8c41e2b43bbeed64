"""colo_proxy.diff"""

"""colo_proxy.nl"""

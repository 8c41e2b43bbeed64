"""colo_proxy.rules"""

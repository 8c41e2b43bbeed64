"""colo_proxy.kmod"""

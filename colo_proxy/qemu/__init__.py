"""colo_proxy.qemu"""

"""colo_proxy.demo"""

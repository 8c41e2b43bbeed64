"""colo_proxy.datapath"""

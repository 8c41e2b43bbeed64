"""QEMU harness for tests and benchmarks: runs Debian's qemu-system-x86_64 with COLO objects.

Not part of the product package; tests import it through pytest's ``pythonpath`` and the
benchmarks through ``bench/_common.py``.
"""

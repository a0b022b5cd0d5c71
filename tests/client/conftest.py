"""Client tests use the live-server fixtures of :mod:`tests.live_server` (a pytest plugin)."""

from tests.live_server import Car, LiveServer, provision

__all__ = ["Car", "LiveServer", "provision"]

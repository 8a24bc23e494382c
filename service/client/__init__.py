"""The gateway's own API as a typed async client, and the operator CLI built on it."""

from service.client.client import GatewayClient, GatewayError, GatewayUnavailable

__all__ = ["GatewayClient", "GatewayError", "GatewayUnavailable"]

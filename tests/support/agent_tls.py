"""The demo layout's agent-side TLS for tests that talk to a broker started from it: a mutual
TLS channel as the ``demo-agent`` certificate, and the channel binding that goes with it."""

from __future__ import annotations

import grpc

from keybroker_cli.demo_setup import DemoLayout, agent_channel


def secure_channel(layout: DemoLayout, address: str) -> grpc.Channel:
    """A channel to the demo broker at ``address`` (mutual TLS, demo CA)."""
    credentials, _ = agent_channel(layout)
    return grpc.secure_channel(address, credentials)


def channel_binding(layout: DemoLayout) -> bytes:
    """What the broker adds to the expected report_data for the demo agent's certificate."""
    return agent_channel(layout)[1]


def tls_kwargs(layout: DemoLayout) -> dict[str, object]:
    """``get_secrets`` keyword arguments for the demo agent (credentials + channel binding)."""
    credentials, binding = agent_channel(layout)
    return {"credentials": credentials, "channel_binding": binding}

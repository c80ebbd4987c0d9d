"""The harness's ports: a session server restarted late in a run must find its port free."""

import socket
from pathlib import Path

from tests.processes import free_port


def test_ports_are_picked_outside_the_range_outgoing_connections_take() -> None:
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        # Outgoing connections (clients of Redis, SMTP, the web) draw their local ports from there.
        client = socket.create_connection(listener.getsockname())
        client_port = client.getsockname()[1]
        client.close()
    assert client_port >= ephemeral_start

    picked = [free_port() for _ in range(200)]
    assert all(port < ephemeral_start for port in picked)
    assert len(set(picked)) == len(picked), "a port handed out twice"
    with socket.create_server(("127.0.0.1", picked[0])):
        pass

"""free_port never hands out one port twice in a process, so processes started together never collide."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from simulation.fleet import free_port


def test_ports_handed_out_are_distinct_and_bindable() -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        ports = list(pool.map(lambda _i: free_port(), range(300)))
    assert len(set(ports)) == len(ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

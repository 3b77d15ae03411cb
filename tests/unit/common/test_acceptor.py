"""The Acceptor takes a burst of connections in a few loop turns, even on a busy loop."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import uvloop

from nebula_common.acceptor import Acceptor

BURST = 300
BUSY_TURN_S = 0.005
CLIENTS = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
sys.stdin.read()
"""


def accept_burst(use_acceptor: bool) -> tuple[int, int]:
    """(connections made, loop turns taken) for BURST clients on a loop whose every turn
    runs a 5 ms callback; uvloop's own server takes one connection per turn."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        made = 0

        class Counted(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                nonlocal made
                made += 1

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        port = sock.getsockname()[1]
        if use_acceptor:
            acceptor = Acceptor(sock, Counted)
        else:
            server = await loop.create_server(Counted, sock=sock, backlog=2048)
        turns = 0
        busy = True

        def turn() -> None:
            nonlocal turns
            turns += 1
            end = time.perf_counter() + BUSY_TURN_S
            while time.perf_counter() < end:
                pass
            if busy:
                loop.call_soon(turn)

        # Another process (a thread would wait for this one's busy turns to drop the GIL);
        # the kernel completes each handshake before any accept.
        clients = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENTS, str(port), str(BURST),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert clients.stdout is not None
        assert await asyncio.wait_for(clients.stdout.readline(), 30) == b"ready\n"
        loop.call_soon(turn)
        await asyncio.sleep(0)
        start = turns
        assert clients.stdin is not None
        clients.stdin.write(b"go\n")  # now: the loop is busy before the first client comes
        deadline = time.perf_counter() + 30
        while made < BURST and time.perf_counter() < deadline:
            await asyncio.sleep(0)
        busy = False
        taken = turns - start
        clients.stdin.close()  # the clients close and exit
        await asyncio.wait_for(clients.wait(), 30)
        if use_acceptor:
            acceptor.close()
            sock.close()
        else:
            server.close()
        return made, taken

    return uvloop.run(main())


def test_a_burst_is_accepted_in_a_few_turns_where_uvloop_takes_one_per_turn() -> None:
    made, turns = accept_burst(use_acceptor=True)
    assert made == BURST and turns <= BURST // 10, (made, turns)
    made, turns = accept_burst(use_acceptor=False)  # what the Acceptor is for
    assert made == BURST and turns >= BURST // 2, (made, turns)

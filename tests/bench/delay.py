"""A TCP proxy that delays each direction by a fixed time: a distant broker on loopback.

    python3 tests/bench/delay.py LISTEN_PORT TARGET_PORT ONE_WAY_MS [LATER_MS]

Each chunk read is written on after ONE_WAY_MS, in order, so a round trip through it takes
twice that (the machine has no `tc netem`). With LATER_MS, SIGUSR1 switches every
connection's delay to it from the next chunk on (a link that gets slower mid-stream: Wi-Fi
failing over to a mobile link). When either side closes, the other is closed once what was
read before has gone through. With UP_BYTES_PER_SEC in the environment, what the client
sends goes no faster than that (a narrow uplink: it waits in the client's socket, as it
would behind a mobile modem).
"""

import asyncio
import os
import signal
import socket
import sys
import time

# The delay in force, in seconds: ONE_WAY_MS, LATER_MS after SIGUSR1.
delays = {"now": 0.0, "later": None}


async def pump(reader, writer, rate=None):
    """Copies reader to writer, each chunk the delay in force after it was read, and no
    faster than `rate` bytes a second if given."""
    chunks = asyncio.Queue()

    async def send():
        while True:
            due, data = await chunks.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                writer.write(data)
                await writer.drain()
            except ConnectionError:
                break

    sender = asyncio.create_task(send())
    # When the link has carried what was read so far, at `rate`.
    carried = time.monotonic()
    try:
        while data := await reader.read(4096 if rate else 65536):
            now = time.monotonic()
            if rate:
                carried = max(carried, now) + len(data) / rate
                await asyncio.sleep(carried - now)
                now = carried
            chunks.put_nowait((now + delays["now"], data))
    except ConnectionError:
        pass
    chunks.put_nowait((time.monotonic() + delays["now"], None))
    await sender


async def main(listen, target):
    if delays["later"] is not None:
        def slower():
            delays["now"] = delays["later"]

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, slower)

    up = float(os.environ.get("UP_BYTES_PER_SEC") or 0) or None

    async def handle(client_reader, client_writer):
        if up:
            # Little room on the way, so that what waits, waits in the client's socket.
            client_writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 16384
            )
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        ways = [
            asyncio.create_task(pump(client_reader, server_writer, up)),
            asyncio.create_task(pump(server_reader, client_writer)),
        ]
        await asyncio.wait(ways, return_when=asyncio.FIRST_COMPLETED)
        for way in ways:
            way.cancel()
        server_writer.close()
        client_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    delays["now"] = float(sys.argv[3]) / 1000
    if len(sys.argv) > 4:
        delays["later"] = float(sys.argv[4]) / 1000
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))

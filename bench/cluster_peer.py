"""The other node of the cluster benchmarks: a separate OS process driven by lines on
stdin (one JSON answer per line on stdout).

    python -m bench.cluster_peer URL NAME KEYS MEMBERS LEASE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import procreg


class Echo(procreg.Server):
    """Answers a call with its request."""

    def handle_call(self, request: Any) -> Any:
        return request


class Idle(procreg.Server):
    """Does nothing; holds a registration."""


class Member(procreg.Server):
    """A group member that counts what it gets."""

    count = 0

    def handle_info(self, msg: Any) -> None:
        Member.count += 1


def say(**answer: Any) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


async def main(keys: int, members: int) -> None:
    node = procreg.current_node()
    for i in range(keys):
        await procreg.get_or_spawn(f"remote-{i}", Idle)
    if members:  # the main peer; a victim peer only holds "victim"
        await procreg.register("echo", Echo.start())
    for _ in range(members):
        await procreg.join("fan", Member.start())
    victim = Idle.start()
    if not members:
        await procreg.register("victim", victim)
    say(ready=True, node=node.name, victim=list(victim))
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        cmd, *args = line.split()
        if cmd == "claim":
            n, start = int(args[0]), time.perf_counter()
            chunk = 2_000
            for base in range(0, n, chunk):
                await asyncio.gather(
                    *(
                        procreg.get_or_spawn(f"peer-new-{args[1]}-{i}", Idle)
                        for i in range(base, min(n, base + chunk))
                    )
                )
            say(rate=n / (time.perf_counter() - start))
        elif cmd == "scoped":  # cluster-scoped servers held here (bench.scoped)
            from bench.scoped import Kept

            await asyncio.gather(
                *(
                    procreg.get_or_spawn(f"victim-{i}", Kept, f"victim-{i}", scope="cluster")
                    for i in range(int(args[0]))
                )
            )
            await asyncio.sleep(0.2)  # their records reach the store
            say(ok=True)
        elif cmd == "count":
            say(count=Member.count)
        elif cmd == "quit":
            say(bye=True)
            return


if __name__ == "__main__":
    url, name, nkeys, nmembers, lease = sys.argv[1:6]
    procreg.run(
        main, int(nkeys), int(nmembers), name=name, cluster=url, secret="bench", lease=float(lease)
    )

"""procreg.testing.loopback: several nodes in one event loop as a cluster: messages,
calls, links, monitors and exit signals across nodes, node down (kill, disconnect,
graceful stop), the shared registry on node down, and the cluster's rules (pickled
messages, unreachable pids of dead incarnations)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import procreg
from conftest import wait_until
from procreg.testing import LoopbackCluster, LoopbackNet

pytestmark = pytest.mark.timeout(30)


class Echo(procreg.Server):
    """Answers ("node",) with its node's name, ("sleep", s) after s seconds, anything
    else with itself; keeps its infos."""

    def init(self) -> None:
        self.infos: list[Any] = []

    async def handle_call(self, request: Any) -> Any:
        if request == "node":
            return procreg.current_node().name
        if request == "infos":
            return list(self.infos)
        if isinstance(request, tuple) and request[0] == "sleep":
            await asyncio.sleep(request[1])
        return request

    def handle_info(self, msg: Any) -> None:
        self.infos.append(msg)


async def idle() -> None:
    await procreg.receive()


async def collect(log: list[Any]) -> None:
    while True:
        log.append(await procreg.receive())


def run(test: Any) -> Any:
    return asyncio.run(test())


# -- messaging -------------------------------------------------------------------------


def test_send_cast_and_call_reach_processes_on_other_nodes() -> None:
    async def test() -> None:
        async with LoopbackCluster(3) as (a, b, c):
            pid = a.spawn(Echo)
            assert pid[0] == a.name
            assert await b.call(pid, "node") == a.name
            assert await c.call(pid, ("x", 1)) == ("x", 1)
            b.send(pid, "one")
            c.send(pid, "two")
            b.send(pid, "three")
            await wait_until(lambda: a.local_process(pid).infos == ["one", "two", "three"])
            assert a.nodes() == b.nodes() == ["n1", "n2", "n3"]

    run(test)


def test_messages_from_one_node_arrive_in_the_order_sent() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            log: list[Any] = []
            pid = a.spawn(collect, log)

            async def sender() -> None:
                for i in range(200):
                    procreg.send(pid, i)

            await b.run(sender)
            await wait_until(lambda: len(log) == 200)
            assert log == list(range(200))

    run(test)


def test_messages_are_copied_and_must_be_picklable() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            log: list[Any] = []
            pid = a.spawn(collect, log)
            payload = {"items": [1]}
            b.send(pid, payload)
            payload["items"].append(2)  # after sending: not what the receiver gets
            await wait_until(lambda: log)
            assert log == [{"items": [1]}]
            assert log[0] is not payload
            with pytest.raises(TypeError, match="picklable"):
                b.send(pid, lambda: None)
            with pytest.raises(TypeError, match="picklable"):
                await b.call(pid, lambda: None, timeout=1)

    run(test)


def test_a_call_to_a_dead_process_on_another_node_raises_no_process() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            pid = a.spawn(Echo)
            a.exit(pid, "kill")
            with pytest.raises(procreg.NoProcess):
                await b.call(pid, "x")

    run(test)


def test_a_process_started_for_a_remote_request_belongs_to_the_node_that_runs_it() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):

            async def where() -> str:
                return procreg.current_node().name

            assert await a.run(where) == a.name
            assert await b.run(where) == b.name
            pid = b.spawn(Echo)
            assert await a.call(pid, "node") == b.name

    run(test)


# -- links, monitors, exit signals -----------------------------------------------------


def test_monitors_and_links_across_nodes_get_the_exit_reason() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            target = a.spawn(Echo)
            seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def watch() -> None:
                ref = procreg.monitor(target)
                procreg.link(target)
                down = await procreg.receive(match=lambda m: isinstance(m, procreg.Down))
                exit_ = await procreg.receive(match=lambda m: isinstance(m, procreg.Exit))
                seen.set_result((ref == down.ref, down.reason, exit_.pid, exit_.reason))

            b.spawn(watch, trap_exits=True)
            await wait_until(lambda: a.info(target).links == 1)
            a.exit(target, "boom")
            assert await seen == (True, "boom", target, "boom")

    run(test)


def test_a_linked_process_on_another_node_dies_with_the_reason() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            target = a.spawn(idle)
            bystander = b.spawn(idle)

            async def linked() -> None:
                procreg.link(target)
                await procreg.receive()

            victim = b.spawn(linked)
            await wait_until(lambda: a.info(target).links == 1)
            reason = asyncio.ensure_future(_down_of(b, victim))
            await asyncio.sleep(0)
            b.exit(target, "crashed")  # an exit signal from another node
            assert await reason == "crashed"
            assert b.is_alive(bystander)

    run(test)


async def _down_of(node: Any, pid: procreg.Pid) -> Any:
    async def wait() -> Any:
        ref = procreg.monitor(pid)
        down = await procreg.receive(match=lambda m: isinstance(m, procreg.Down) and m.ref == ref)
        return down.reason

    return await node.run(wait)


def test_monitor_of_a_dead_remote_process_gives_down_noproc() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            pid = a.spawn(idle)
            a.exit(pid, "kill")
            assert await _down_of(b, pid) == "noproc"

    run(test)


# -- node down ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "disconnect"])
def test_node_down_gives_noconnection_to_monitors_links_and_calls(how: str) -> None:
    async def test() -> None:
        async with LoopbackCluster(3) as cluster:
            a, b, c = cluster
            target = a.spawn(Echo)
            down_reason = asyncio.ensure_future(_down_of(b, target))

            exit_reason: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def linked() -> None:
                procreg.link(target)
                msg = await procreg.receive(match=lambda m: isinstance(m, procreg.Exit))
                exit_reason.set_result(msg.reason)

            c.spawn(linked, trap_exits=True)
            pending = asyncio.ensure_future(b.call(target, ("sleep", 10), timeout=20))
            events: list[Any] = []

            async def nodes_watcher() -> None:
                procreg.monitor_nodes(True)
                await collect(events)

            c.spawn(nodes_watcher)
            await wait_until(lambda: a.info(target).links == 1 and a.info(target).monitors == 1)
            if how == "kill":
                await cluster.kill(a)
            else:
                cluster.disconnect(a)
            assert await down_reason == "noconnection"
            assert await exit_reason == "noconnection"
            with pytest.raises(procreg.NodeDown):
                await pending
            with pytest.raises(procreg.NodeDown):  # a pid of a node known to be down
                await b.call(target, "x")
            assert await _down_of(c, target) == "noconnection"
            assert b.nodes() == ["n2", "n3"]
            await wait_until(lambda: procreg.NodeEvent("down", "n1") in events)

    run(test)


def test_the_disconnected_node_sees_every_other_node_down_and_fences() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as cluster:
            a, b = cluster
            remote = b.spawn(Echo)
            registered = await a.run(procreg.get_or_spawn, "k", Echo)
            plain = a.spawn(idle)
            down = asyncio.ensure_future(_down_of(a, remote))
            await cluster.settle()
            cluster.disconnect(a)
            assert await down == "noconnection"
            assert a.nodes() == ["n1"]
            await wait_until(lambda: not a.is_alive(registered))  # fenced
            assert a.is_alive(plain)  # not registered: goes on
            with pytest.raises(procreg.ClusterUnavailable):
                await a.run(procreg.get_or_spawn, "other", Echo)
            assert await a.run(procreg.whereis, "k") is None
            # the others may start the key again at once
            again = await b.run(procreg.get_or_spawn, "k", Echo)
            assert again[0] == b.name

            # back, with a new creation: the old incarnation's pids stay unreachable
            old = a.creation
            cluster.reconnect(a)
            assert a.creation == old + 1
            assert a.nodes() == b.nodes() == ["n1", "n2"]
            with pytest.raises(procreg.NoProcess, match="earlier incarnation"):
                await b.call(plain, "x")
            fresh = a.spawn(Echo)
            assert await b.call(fresh, "node") == a.name
            assert await a.run(procreg.whereis, "k") == again

    run(test)


def test_a_node_that_goes_down_releases_its_keys_and_group_memberships() -> None:
    async def test() -> None:
        async with LoopbackCluster(3) as cluster:
            a, b, c = cluster
            pid = await a.run(procreg.get_or_spawn, "session", Echo)

            async def join() -> None:
                await procreg.join("room")
                await procreg.receive()

            a.spawn(join)
            member_b = b.spawn(join)
            await wait_until(lambda: len(cluster.net.groups.get("room", ())) == 2)
            assert await c.run(procreg.whereis, "session") == pid
            watch: list[Any] = []

            async def key_watcher() -> None:
                await procreg.monitor_key("session")
                await collect(watch)

            c.spawn(key_watcher)
            await cluster.settle()
            await cluster.kill(a)
            # at once: a Down handler looking the key up finds it free
            assert await c.run(procreg.whereis, "session") is None
            assert await b.run(procreg.members, "room") == [member_b]
            await wait_until(lambda: [(e.event, e.pid) for e in watch] == [("ended", pid)])
            again, started = await c.run(procreg.spawn_unique, "session", Echo)
            assert started and again[0] == c.name

    run(test)


def test_a_graceful_stop_gives_the_exit_reason_before_the_node_leaves() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as cluster:
            a, b = cluster
            target = a.spawn(idle)
            down = asyncio.ensure_future(_down_of(b, target))
            await cluster.settle()
            await cluster.stop_node(a)
            assert await down == "shutdown"
            assert b.nodes() == ["n2"]
            # the name comes back as a new incarnation
            a2 = await cluster.start_node("n1")
            assert a2.creation == 2
            assert b.nodes() == ["n1", "n2"]
            assert await b.call(a2.spawn(Echo), "node") == "n1"

    run(test)


# -- the shared registry ---------------------------------------------------------------


def test_the_registry_is_shared_and_a_key_starts_once_whoever_asks() -> None:
    async def test() -> None:
        async with LoopbackCluster(3) as nodes:
            results = await asyncio.gather(
                *(n.run(procreg.spawn_unique, "room", Echo) for n in nodes for _ in range(5))
            )
            assert len({pid for pid, _ in results}) == 1
            assert sum(started for _, started in results) == 1

    run(test)


def test_messages_to_a_process_starting_for_a_key_wait_for_its_init() -> None:
    class Slow(Echo):
        async def init(self) -> None:  # type: ignore[override]
            self.infos = []
            await asyncio.sleep(0.02)

    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            starting = asyncio.ensure_future(a.run(procreg.get_or_spawn, "slow", Slow))
            pid = await wait_until(lambda: b.run(procreg.whereis, "slow"))
            b.send(pid, "early")  # before its init is done: kept until it is
            assert await b.call(pid, "infos") == ["early"]
            assert await starting == pid

    run(test)


# -- the API ---------------------------------------------------------------------------


def test_nodes_can_join_a_net_by_hand_and_names_must_be_unique() -> None:
    async def test() -> None:
        net = LoopbackNet()
        async with procreg.Node("x", dist=net) as x:
            assert x.creation == 1
            with pytest.raises(ValueError, match="already"):
                await procreg.Node("x", dist=net).start()
            assert x.nodes() == ["x"]
        assert net.members == {}
        with pytest.raises(ValueError):
            procreg.Node("y", dist=net, cluster="redis://127.0.0.1:1/0")

    run(test)


def test_the_tests_own_code_is_outside_every_node() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, _):
            with pytest.raises(procreg.NoNode):
                procreg.spawn(idle)
            pid = a.spawn(Echo)  # (a Server class finds its node through `spawn`)
            assert pid[0] == "n1"

    run(test)


def test_a_loopback_node_ignores_procreg_cluster_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROCREG_CLUSTER", "redis://127.0.0.1:1/0")

    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            assert a.cluster is None
            assert await b.call(a.spawn(Echo), "node") == "n1"

    run(test)


def test_a_stopped_loopback_node_says_so() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as cluster:
            a, _ = cluster
            await cluster.stop_node(a)
            with pytest.raises(RuntimeError, match="not running"):
                a.spawn(Echo)

    run(test)


def test_a_call_to_a_node_that_is_not_there_raises_node_down() -> None:
    async def test() -> None:
        async with LoopbackCluster(2) as (a, _):
            with pytest.raises(procreg.NodeDown):
                await a.call(procreg.Pid("ghost", 1, 1), "x", timeout=5)

    run(test)


def test_replies_are_copied_too_and_an_unpicklable_one_fails_the_call() -> None:
    class Hands(procreg.Server):
        def init(self) -> None:
            self.state = {"n": [1]}

        def handle_call(self, request: Any) -> Any:
            if request == "state":
                return self.state
            return lambda: None  # cannot cross

    async def test() -> None:
        async with LoopbackCluster(2) as (a, b):
            pid = a.spawn(Hands)
            got = await b.call(pid, "state")
            got["n"].append(2)
            assert a.local_process(pid).state == {"n": [1]}
            with pytest.raises(procreg.ProcregError, match="unpicklable"):
                await b.call(pid, "fn")

    run(test)

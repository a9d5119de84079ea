"""The composition root and the seams (issue 14): `Node` is the runtime's `Kernel`
with its backends wired in (that the runtime imports none is `lint-imports`' check),
backends implement the protocol rather than inherit each other, and the state the
layers above keep per node still shows where it did."""

from __future__ import annotations

import asyncio

import procreg
from procreg.backends import RegistryBackend
from procreg.cluster.backend import RedisBackend
from procreg.kernel import Kernel
from procreg.registry import LocalBackend
from procreg.spawning import is_server_class


def test_node_is_a_kernel_and_methods_are_bound_from_their_modules():
    assert issubclass(procreg.Node, Kernel)
    assert procreg.Node.link is procreg.signals.link  # (a plain function: a method)
    assert procreg.Node.spawn is procreg.spawning.spawn
    assert procreg.current_node is procreg.kernel.current_node


def test_every_backend_implements_the_whole_protocol():
    assert not issubclass(RedisBackend, LocalBackend)
    names = [n for n, v in vars(RegistryBackend).items() if callable(v) and n[0] != "_"]
    assert "get_or_spawn" in names and "process_ended" in names
    for backend in (LocalBackend, RedisBackend):
        missing = [n for n in names if getattr(backend, n) is getattr(RegistryBackend, n)]
        assert missing == [], (backend, missing)


def test_is_server_class():
    class Echo(procreg.Server):
        def handle_call(self, request):
            return request

    async def body():
        pass

    assert is_server_class(Echo)
    assert not is_server_class(procreg.Server.__new__(Echo))  # an instance
    assert not is_server_class(body)
    assert not is_server_class(int)


def test_supervisors_are_named_in_info_and_stopped_first():
    order = []

    class Worker(procreg.Server):
        def init(self, name):
            self.name = name

        def terminate(self, reason):
            order.append((self.name, reason))

    async def scenario():
        async with procreg.Node() as node:
            sup = await procreg.Supervisor.start(
                [procreg.child(Worker, "supervised", id="w")], name="top"
            )
            loose = Worker.start("loose")  # newest: stopped after the tree all the same
            kinds = (node.info(sup).kind, node.info(loose).kind)
        return kinds, node.info(sup)

    kinds, after = asyncio.run(scenario())
    assert kinds == ("Supervisor", "Worker")
    assert after is None
    assert order == [("supervised", "shutdown"), ("loose", "shutdown")]


def test_a_start_whose_handler_init_fails_leaves_the_cluster_and_can_be_retried():
    from procreg.nitrogen import NprocregHandler
    from procreg.testing import LoopbackNet

    class Flaky(NprocregHandler):
        fail = True

        async def init(self, config, state):
            if Flaky.fail:
                raise RuntimeError("handler init failed")
            return await super().init(config, state)

    async def scenario():
        net = LoopbackNet()
        async with procreg.Node("b", dist=net) as b:
            node = procreg.Node("x", dist=net, registry_handler=Flaky())
            try:
                await node.start()
            except RuntimeError:
                pass
            else:
                raise AssertionError("start should have failed")
            seen = (sorted(net.members), b.nodes(), node.running)
            Flaky.fail = False
            await node.start()  # the same object, started again
            again = b.nodes()
            await node.stop()
        return seen, again

    seen, again = asyncio.run(scenario())
    assert seen == (["b"], ["b"], False)  # not left half-joined
    assert again == ["b", "x"]


def test_a_stopped_node_is_garbage_collected():
    # the state the layers above keep per node (the handler's slot, the supervision
    # state) must not keep the node alive once nothing else refers to it
    import gc
    import weakref

    async def one():
        node = procreg.Node("gone")
        async with node:
            await procreg.supervisor.root()
        return weakref.ref(node)

    ref = asyncio.run(one())
    gc.collect()
    assert ref() is None


def test_a_failing_shutdown_hook_does_not_stop_the_stop():
    async def broken(deadline):
        raise RuntimeError("hook failed")

    async def scenario():
        node = procreg.Node("hooks")
        await node.start()
        node.shutdown_hooks.append(broken)
        procreg.spawn(procreg.receive)
        await node.stop()
        return node.running, node.process_count()

    assert asyncio.run(scenario()) == (False, 0)

"""What an API returns is the caller's: changing it changes nothing in procreg
(issue 12, item 6). Each test mutates what one API returns, then asks again."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

import procreg
from procreg import Supervisor, child, nitrogen


async def _idle():
    while True:
        await procreg.receive()


class Echo(procreg.Server):
    def handle_call(self, request):
        return request


def test_registry_views_are_copies():
    async def main():
        pid = procreg.spawn(_idle)
        meta = {"role": "a", "tags": ["x"]}
        await procreg.register("k", pid, meta=meta)
        meta["tags"].append("changed after register")
        await procreg.join("g", pid)
        registry = procreg.current_node().registry
        views = [procreg.entries(), procreg.tables(), registry.groups(), await procreg.members("g")]
        for view in views:
            view.append("junk")
            view.reverse()
            view.clear()
        found = await procreg.lookup("k")
        found[1]["role"] = "changed"
        found[1]["tags"].append("changed after lookup")
        again = await procreg.lookup("k")
        return (
            procreg.entries(),
            procreg.tables(),
            registry.groups(),
            await procreg.members("g"),
            again,
            await procreg.publish("g", "hi"),
            pid,
        )

    entries, tables, groups, members, again, reached, pid = procreg.run(main)
    assert entries == [("k", pid)] and tables == ["default"] and groups == ["g"]
    assert members == [pid] and reached == 1
    assert again == (pid, {"role": "a", "tags": ["x"]})


def test_supervisor_views_are_copies():
    async def main():
        sup = await Supervisor.start(
            [child(Echo, id="w"), child(Supervisor, [], id="s", strategy="one_for_all")]
        )
        rows = await Supervisor.which_children(sup)
        rows[0].pid = None
        rows[0].id = "changed"
        rows.clear()
        counts = await Supervisor.count_children(sup)
        counts["active"] = 99
        spec = await Supervisor.get_child_spec(sup, "s")
        spec.kwargs["strategy"] = "one_for_one"
        rows2 = await Supervisor.which_children(sup)
        spec2 = await Supervisor.get_child_spec(sup, "s")
        return (
            [(r.id, r.pid is not None) for r in rows2],
            await Supervisor.count_children(sup),
            spec2.kwargs,
        )

    rows, counts, kwargs = procreg.run(main)
    assert rows == [("w", True), ("s", True)]
    assert counts == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}
    assert kwargs == {"strategy": "one_for_all"}


def test_node_views_are_copies():
    async def main():
        node = procreg.current_node()
        pid = procreg.spawn(_idle)
        await procreg.register("k", pid)
        await procreg.join("g", pid)
        procreg.link(pid)
        procreg.monitor(pid)
        info = node.info(pid)
        with pytest.raises(FrozenInstanceError):
            info.links = 99  # records are frozen
        as_dict = info.as_dict()
        for value in as_dict.values():
            if isinstance(value, list):
                value.append("junk")
        as_dict["links"] = 99
        as_dict.clear()
        stats = node.stats()
        with pytest.raises(FrozenInstanceError):
            stats.processes = -1
        stats.as_dict()["processes"] = -1
        for view in (node.processes(), node.nodes(), procreg.nodes()):
            view.append("junk")
            view.clear()
        again = node.info(pid)
        return again, node.stats().processes, node.processes(), procreg.nodes(), pid

    info, count, processes, nodes, pid = procreg.run(main)
    assert info.keys == ("('default', 'k')",) and info.groups == ("'g'",)
    assert info.as_dict()["keys"] == ["('default', 'k')"]
    assert info.links == 1 and info.monitors == 1
    assert count == 2 and processes[-1] == pid and len(processes) == 2
    assert nodes == ["local"]


class ConfigChanger(nitrogen.NprocregHandler):
    serialized = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    async def init(self, config: dict[str, Any], state: Any) -> Any:
        config["init"] = True
        return state

    async def lookup_pid(
        self, key: Hashable, config: dict[str, Any], state: Any
    ) -> tuple[procreg.Pid | None, Any]:
        self.seen.append(dict(config))
        config["changed"] = key
        return await super().lookup_pid(key, config, state)


def test_handler_config_is_a_copy_for_each_callback():
    handler = ConfigChanger()

    async def main():
        await nitrogen.get_pid("a")
        await nitrogen.get_pid("b")
        return dict(procreg.current_node().handler_config)

    config = procreg.run(main, registry_handler=handler, handler_config={"opt": 1})
    assert config == {"opt": 1}
    assert handler.seen == [{"opt": 1}, {"opt": 1}]

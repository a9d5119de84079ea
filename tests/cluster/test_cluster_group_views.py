"""`groupview.GroupViews` on its own (no Redis): a view loads once, updates that
arrive while its load is in flight are applied after what the load read, ``GNONE``
drops a node, removals never drop one, and `clear` makes the next publish load again.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from procreg.cluster.codec import pid_str
from procreg.cluster.groupview import GroupViews
from procreg.pid import Pid


class FakeStore:
    """Answers `MEMBERS` with `members` once `release` is set; records the calls."""

    def __init__(self, members: list[Pid]) -> None:
        self.members = members
        self.release = asyncio.Event()
        self.calls: list[str] = []
        self.removed: list[tuple[str, str]] = []

    up = True

    def key(self, *parts: str) -> str:
        return "procreg:" + ":".join(parts)

    async def run(self, fn: Any) -> Any:
        self.calls.append("watch")
        return await fn(SimpleNamespace(pipeline=self._pipeline))

    def _pipeline(self, transaction: bool = True) -> Any:
        added: list[tuple[str, str]] = []

        async def execute() -> list[int]:
            self.added = added
            return [1] * len(added)

        def srem(k: str, m: str) -> None:
            self.removed.append((k, m))

        return SimpleNamespace(sadd=lambda k, m: added.append((k, m)), srem=srem, execute=execute)

    async def script(self, name: str, keys: list[str], args: list[str]) -> list[bytes]:
        self.calls.append(name)
        await self.release.wait()
        return [pid_str(p).encode() for p in self.members]


def views_for(store: FakeStore) -> GroupViews:
    backend = SimpleNamespace(
        store=store,
        node=SimpleNamespace(name="me"),
        cluster=SimpleNamespace(creation=7),
        owned=lambda: "procreg:owned:me:7",
        runtime=SimpleNamespace(loop=asyncio.get_running_loop()),
    )
    return GroupViews(backend)  # type: ignore[arg-type]


def test_updates_during_a_load_are_applied_after_it() -> None:
    a1, b1, b2, b3 = Pid("a", 1, 1), Pid("b", 1, 1), Pid("b", 1, 2), Pid("b", 1, 3)

    async def main() -> None:
        store = FakeStore([a1, b1, Pid("me", 7, 5)])  # our own members are not in it
        views = views_for(store)
        first = asyncio.ensure_future(views.view("g", '"g"'))
        second = asyncio.ensure_future(views.view("g", '"g"'))  # shares the load
        await asyncio.sleep(0)
        assert store.calls == ["watch", "members"]  # watcher first, then members
        # in the group's watcher set, and in our owned set (the purge takes it out)
        assert store.added == [
            ('procreg:gw:"g"', "me\t7\t1"),
            ("procreg:owned:me:7", 'v\x1f"g"\x1fme\t7\t1'),
        ]
        views.update("b", '"g"', [b2, b3], [b1])  # in flight: applied after the load
        views.none("a", '"g"')
        store.release.set()
        view = await first
        assert view == {"b": {b2, b3}}
        assert await second is view
        assert views.loads == 1 and store.calls == ["watch", "members"]
        views.update("b", '"g"', [], [b2, b3])
        assert views.views['"g"'] == {"b": set()}  # removals never drop a node
        views.none("b", '"g"')
        assert views.views['"g"'] == {}
        views.update("c", '"h"', [Pid("c", 1, 1)], [])  # a group we do not watch
        assert '"h"' not in views.views
        views.clear()
        assert await views.view("g", '"g"') == {"a": {a1}, "b": {b1}}
        assert views.loads == 2

    asyncio.run(main())


def test_a_node_going_down_leaves_every_view() -> None:
    async def main() -> None:
        store = FakeStore([Pid("a", 1, 1), Pid("b", 1, 1)])
        store.release.set()
        views = views_for(store)
        await views.view("g", '"g"')
        await views.view("h", '"h"')
        views.node_down("a", 1)
        assert views.views == {'"g"': {"b": {Pid("b", 1, 1)}}, '"h"': {"b": {Pid("b", 1, 1)}}}

    asyncio.run(main())


def test_a_newer_incarnation_stays_when_an_older_one_goes_down() -> None:
    """b restarted under its name: its new incarnation's member (a GVIEW that came
    before our poll saw the old one go) stays in the view; the old ones go, also from
    a load in flight."""
    b1, b2 = Pid("b", 1, 1), Pid("b", 2, 1)

    async def main() -> None:
        store = FakeStore([b1])
        views = views_for(store)
        loading = asyncio.ensure_future(views.view("h", '"h"'))
        await asyncio.sleep(0)
        store.release.set()
        views.node_down("b", 1)  # while "h" loads: applied after what it read
        assert await loading == {}
        await views.view("g", '"g"')
        views.update("b", '"g"', [b2], [])
        views.node_down("b", 1)
        assert views.views['"g"'] == {"b": {b2}}
        views.node_down("b", 2)
        assert views.views['"g"'] == {}

    asyncio.run(main())


def test_an_idle_view_is_dropped_and_a_late_removal_cannot_take_a_new_entry() -> None:
    """A view not published to between two sweeps is dropped and its own watcher
    entry removed; a view loaded again records a new entry (another serial), so a
    removal of the old one that reaches the store late leaves the new one."""

    async def main() -> None:
        store = FakeStore([Pid("a", 1, 1)])
        store.release.set()
        views = views_for(store)
        await views.view("g", '"g"')
        await views.view("h", '"h"')
        views.sweep()  # the loads were a use
        assert sorted(views.views) == ['"g"', '"h"'] and store.removed == []
        views.used.add('"g"')  # (what a publish from the view does)
        views.sweep()
        assert sorted(views.views) == ['"g"']
        await views._unwatching  # type: ignore[misc]
        assert store.removed == [
            ('procreg:gw:"h"', "me\t7\t2"),
            ("procreg:owned:me:7", 'v\x1f"h"\x1fme\t7\t2'),
        ]
        await views.view("h", '"h"')
        assert store.added[0] == ('procreg:gw:"h"', "me\t7\t3")
        views.clear()  # every kept entry is taken out at the next sweep
        assert sorted(e for _, e in views.stale) == ["me\t7\t1", "me\t7\t3"]
        views.sweep()
        await views._unwatching  # type: ignore[misc]
        assert views.stale == [] and views.views == {}
        await views.close()
        assert views._sweeper is None

    asyncio.run(main())


def test_every_stale_entry_leaves_in_one_sweep_and_a_closed_node_stops_sweeping() -> None:
    """A sweep takes out every stale watcher entry (in pipelines of `UNWATCH_BATCH`),
    not one batch a sweep (10,000 dropped views took 20 minutes and the entries piled
    up); once closed, a load that completes arms no sweep (its timer kept the stopped
    node alive)."""
    from procreg.cluster.groupview import UNWATCH_BATCH

    async def main() -> None:
        store = FakeStore([Pid("a", 1, 1)])
        views = views_for(store)
        views.stale = [(f'"g{i}"', f"me\t7\t{i}") for i in range(2 * UNWATCH_BATCH + 5)]
        views.sweep()
        await views._unwatching  # type: ignore[misc]
        assert views.stale == []
        assert len(store.removed) == 2 * len(range(2 * UNWATCH_BATCH + 5))
        views._sweeper.cancel()  # type: ignore[union-attr]
        views._sweeper = None
        loading = asyncio.ensure_future(views.view("g", '"g"'))
        await asyncio.sleep(0)
        await views.close()
        store.release.set()
        await loading
        assert views._sweeper is None

    asyncio.run(main())

"""Remote pids: call, cast, send, ordering, monitors, links and exit signals across
node processes."""

from __future__ import annotations

import pytest

from .harness import wait_for

pytestmark = pytest.mark.timeout(60)


def watched(node, watcher):
    return node.ok("watched", watcher=watcher)


def wait_message(node, watcher, timeout=5.0):
    """The first message a watcher recorded."""
    rec = wait_for(
        lambda: (r := watched(node, watcher))["messages"] and r,
        timeout,
        what=f"a message for watcher {watcher} on {node.name}",
    )
    return rec["messages"][0]["msg"]


def wait_ended(node, watcher, timeout=5.0):
    """How a watcher ended (``{"t": ..., "reason": ...}``)."""
    rec = wait_for(
        lambda: (r := watched(node, watcher))["ended"] and r,
        timeout,
        what=f"watcher {watcher} on {node.name} to end",
    )
    return rec["ended"]


def test_remote_call_cast_and_send(cluster):
    n1, n2 = cluster(["n1", "n2"])
    server = n1.ok("spawn", factory="Echo")
    assert n2.ok("call", pid=server, request=["echo", {"a": [1, 2]}]) == {"a": [1, 2]}
    assert n2.ok("call", pid=server, request=["whoami"]) == server
    n2.ok("cast", pid=server, msg="a cast")
    n2.ok("send", pid=server, msg=["a", "send"])
    assert n2.ok("call", pid=server, request=["log"]) == [
        ["cast", "a cast"],
        ["info", ["a", "send"]],
    ]
    # a call that crashes the remote server: ProcessExited at the caller
    answer = n2.req("call", pid=server, request=["crash", "boom"])
    assert answer["error"] == "ProcessExited"
    # a coroutine process answers remote calls too
    body = n2.ok("spawn", factory="co_echo")
    assert n1.ok("call", pid=body, request=["echo", 42]) == 42
    n1.ok("send", pid=body, msg="hello")
    assert n1.ok("call", pid=body, request=["log"]) == [["info", "hello"]]


def test_per_pair_ordering_of_a_thousand_messages(cluster):
    n1, n2 = cluster(["n1", "n2"])
    server = n1.ok("spawn", factory="Echo")
    assert n2.ok("send_many", pid=server, n=1000, how="cast") == 1000
    assert n2.ok("send_many", pid=server, n=1000, how="send") == 1000
    log = n2.ok("call", pid=server, request=["log"], timeout=10)
    expected = [["cast", ["seq", i]] for i in range(1000)]
    expected += [["info", ["seq", i]] for i in range(1000)]
    assert log == expected


def test_monitor_across_nodes_gets_the_crash_reason(cluster):
    n1, n2 = cluster(["n1", "n2"])
    server = n1.ok("spawn", factory="Echo")
    watcher = n2.ok("watch", target=server, mode="monitor")
    assert n2.req("call", pid=server, request=["crash", "boom"])["error"] == "ProcessExited"
    down = wait_message(n2, watcher)
    assert down["type"] == "Down"
    assert down["pid"] == server
    assert down["reason"] == "RuntimeError: boom"
    # monitoring a remote pid that is already dead: Down with "noproc"
    late = n2.ok("watch", target=server, mode="monitor")
    assert wait_message(n2, late)["reason"] == "noproc"


def test_link_across_nodes_in_both_directions(cluster):
    n1, n2 = cluster(["n1", "n2"])
    # 1. a remote linked process crashes: the local one goes down with its reason
    a = n1.ok("spawn", factory="Echo")
    plain_watcher = n2.ok("watch", target=a, mode="link")
    trapping = n2.ok("watch", target=a, mode="link", trap=True)
    n1.req("call", pid=a, request=["crash", "boom"])
    ended = wait_ended(n2, plain_watcher)
    assert ended["reason"] == "RuntimeError: boom"
    # ... unless it traps exits: then it gets Exit and lives on
    exit_msg = wait_message(n2, trapping)
    assert exit_msg == {"type": "Exit", "pid": a, "reason": "RuntimeError: boom"}
    assert watched(n2, trapping)["ended"] is None
    assert n2.ok("alive", pid=trapping) is True

    # 2. the local side dies: the remote linked process goes down with the reason
    b = n1.ok("spawn", factory="Echo")
    b_monitor = n1.ok("watch", target=b, mode="monitor")
    linker = n2.ok("watch", target=b, mode="link")
    n2.ok("exit", pid=linker, reason="bye")
    assert wait_ended(n2, linker)["reason"] == "bye"
    down = wait_message(n1, b_monitor)
    assert down["reason"] == "bye"
    assert n1.ok("alive", pid=b) is False

    # 3. a "normal" end does not take the linked remote process down
    c = n1.ok("spawn", factory="Echo")
    survivor = n2.ok("watch", target=c, mode="link")
    assert n2.req("call", pid=c, request=["stop", "normal"])["error"] == "ProcessExited"
    wait_for(lambda: n1.ok("alive", pid=c) is False, 5, what="c to stop")
    assert n2.ok("call", pid=n1.ok("spawn", factory="Echo"), request=["echo", 1]) == 1
    assert watched(n2, survivor)["ended"] is None


def test_exit_signals_to_remote_pids(cluster):
    n1, n2 = cluster(["n1", "n2"])
    # "kill" is untrappable, also across nodes
    target = n1.ok("watch", target=n1.ok("spawn", factory="Echo"), mode="monitor", trap=True)
    monitor = n1.ok("watch", target=target, mode="monitor")
    n2.ok("exit", pid=target, reason="kill")
    assert wait_message(n1, monitor)["reason"] == "kill"
    # other reasons reach a trapping process as Exit messages
    trapper = n1.ok("watch", target=n1.ok("spawn", factory="Echo"), mode="monitor", trap=True)
    n2.ok("exit", pid=trapper, reason="please")
    msg = wait_message(n1, trapper)
    assert msg["type"] == "Exit" and msg["reason"] == "please"
    assert msg["pid"][0] == "n2"
    # and end a process that does not trap
    plain = n1.ok("spawn", factory="Echo")
    plain_monitor = n1.ok("watch", target=plain, mode="monitor")
    n2.ok("exit", pid=plain, reason="go away")
    assert wait_message(n1, plain_monitor)["reason"] == "go away"


def test_call_to_a_dead_remote_pid_fails_at_once(cluster):
    n1, n2 = cluster(["n1", "n2"])
    server = n1.ok("spawn", factory="Echo")
    n1.ok("exit", pid=server, reason="kill")
    answer = n2.req("call", pid=server, request=["echo", 1], timeout=5.0)
    assert answer["error"] == "NoProcess"
    assert answer["elapsed"] < 1.0, answer  # one round trip, not the 5 s timeout
    # a pid of a node that was never in the cluster
    answer = n2.req("call", pid=["nowhere", 1, 1], request=["echo", 1], timeout=5.0)
    assert answer["error"] == "NodeDown"
    assert answer["elapsed"] < 0.5


def test_unpicklable_messages_to_remote_pids_raise_type_error_at_the_call_site(cluster):
    n1, n2 = cluster(["n1", "n2"])
    server = n1.ok("spawn", factory="Echo")
    result = n2.ok("bad_send", pid=server)
    for how in ("send", "cast", "call"):
        assert result[how]["error"] == "TypeError", (how, result)
        assert result[how]["elapsed"] < 0.1
    # nothing reached the server, and it is fine
    assert n2.ok("call", pid=server, request=["log"]) == []

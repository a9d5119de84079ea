"""Cluster tests: real Redis servers and nodes as separate OS processes.

`harness` starts a private ``redis-server`` (or ``valkey-server``) and drives node
processes (`node_runner`) over JSON lines; `servers` holds the process factories
every node imports by the same name (``cluster.servers``), as ``placement="hash"``
requires.
"""

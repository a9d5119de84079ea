import procreg


class Room(procreg.Server):
    def init(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    def handle_call(self, request: str) -> list[str]:
        if request == "history":
            return list(self.lines)
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, line: str) -> None:
        self.lines.append(line)


async def main() -> list[str]:
    # one process per key, however many callers race for it (on every node)
    room = await procreg.get_or_spawn(("room", "lobby"), Room, "lobby")
    procreg.cast(room, "hello")
    assert await procreg.whereis(("room", "lobby")) == room
    history: list[str] = await procreg.call(room, "history")
    return history


print(procreg.run(main))  # ['hello']; add cluster="redis://127.0.0.1:6379/0" to share it

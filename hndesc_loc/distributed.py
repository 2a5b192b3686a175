"""Executors for scale-out. `local` runs in-process (None)."""


def make_executor(name: str):
    if name == "local":
        return None
    raise ValueError(f"Unknown executor '{name}'")

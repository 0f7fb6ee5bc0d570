from typing import Any

def read_blocks(ring: Any, block: int, block_bytes: int, blocks: int, limit: int, frames: list[bytes],
                stamps: list[float], ether: bool, /) -> tuple[int, int, int]: ...

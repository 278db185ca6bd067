"""The decoding memory budget of ``dogclf serve``: large photos wait for room, in order, and never beyond it."""

from __future__ import annotations

import asyncio

import pytest

from dogclf.serving.decode_memory import LARGE_DECODE_BYTES, DecodeMemory, decode_bytes


def test_a_large_jpeg_is_costed_at_its_draft_scale_and_other_formats_at_full_size() -> None:
    assert decode_bytes(8000, 6000, "PNG", 256) == 8000 * 6000 * 8
    assert decode_bytes(8000, 6000, "JPEG", 256) == 1000 * 750 * 8  # 1/8: both sides stay >= 256
    assert decode_bytes(800, 600, "JPEG", 256) == 400 * 300 * 8  # 1/2: 1/4 would go under 256
    assert decode_bytes(8000, 6000, "MPO", None) == 8000 * 6000 * 8  # no resize size: no draft
    assert decode_bytes(640, 480, "JPEG", 256) < LARGE_DECODE_BYTES < decode_bytes(3000, 3000, "PNG", 256)


def test_reservations_wait_in_order_for_room_and_the_budget_is_never_exceeded() -> None:
    async def scenario() -> tuple[list[str], DecodeMemory]:
        memory = DecodeMemory(100)
        order: list[str] = []

        async def decode(name: str, nbytes: int, seconds: float) -> None:
            held = await memory.acquire(nbytes)
            order.append(name)
            assert memory.in_use <= memory.limit_bytes or held == memory.limit_bytes
            await asyncio.sleep(seconds)
            memory.release(held)

        await asyncio.gather(
            decode("a", 60, 0.05),
            decode("b", 60, 0.01),  # waits for a
            decode("c", 30, 0.01),  # fits beside a, but arrived after b: waits its turn
            decode("huge", 500, 0.01),  # over the whole budget: alone
        )
        return order, memory

    order, memory = asyncio.run(scenario())

    assert order == ["a", "b", "c", "huge"]
    assert memory.peak == 100  # b and c together, the huge one counted as the whole budget
    assert memory.in_use == 0
    assert memory.waited == 3


def test_a_cancelled_wait_gives_its_turn_to_the_next() -> None:
    async def scenario() -> list[str]:
        memory = DecodeMemory(100)
        first = await memory.acquire(80)
        order: list[str] = []

        async def decode(name: str, nbytes: int) -> None:
            held = await memory.acquire(nbytes)
            order.append(name)
            memory.release(held)

        waiting = asyncio.ensure_future(decode("timed out", 80))
        following = asyncio.ensure_future(decode("next", 10))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert order == ["next"]  # fits beside the first once the one ahead of it left
        memory.release(first)
        await following
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return order

    assert asyncio.run(scenario()) == ["next"]

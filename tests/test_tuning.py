"""The performance settings that are not in the write path, each checked where it lives."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest
from support.recorder import RunningRecorder

from recorder_server import tuning
from recorder_server.reads import ReadPool


@pytest.fixture
def restored() -> Iterator[None]:
    interval = sys.getswitchinterval()
    yield
    gc.unfreeze()
    sys.setswitchinterval(interval)


def test_serve_shortens_the_gil_switch_interval_and_freezes_what_startup_made(
    restored: None,
) -> None:
    sys.setswitchinterval(0.005)
    tuning.before_start()
    assert sys.getswitchinterval() == pytest.approx(tuning.GIL_SWITCH_INTERVAL_S)
    gc.unfreeze()
    tuning.after_start()
    assert gc.get_freeze_count() > 0


async def test_readers_map_the_file_into_memory(recorder: RunningRecorder) -> None:
    pool = ReadPool(recorder.db_path, 1)
    await pool.open()
    try:
        async with pool.connection() as conn:
            rows = list(await conn.execute_fetchall("PRAGMA mmap_size"))
        assert rows == [(1024 * 1024 * 1024,)]
    finally:
        await pool.close()

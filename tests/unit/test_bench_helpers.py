"""The benchmark scripts' bookkeeping (not their timings): sections, percentiles, drain rates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bench.common import import_sections, percentile, write_section
from bench.drain import rate_from_end_times


def test_write_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "B.md"
    write_section("a-cpu", "first", path)
    write_section("b-cpu", "other", path)
    write_section("a-cpu", "second", path)
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- bench:a-cpu -->") == 1


def test_import_sections_takes_the_gpu_blocks(tmp_path):
    gpu, mine = tmp_path / "gpu.md", tmp_path / "mine.md"
    write_section("x-cuda", "gpu numbers", gpu)
    write_section("x-cpu", "stale cpu numbers", gpu)
    write_section("x-cpu", "cpu numbers", mine)
    assert import_sections(gpu, "-cuda", mine) == ["x-cuda"]
    text = mine.read_text()
    assert "gpu numbers" in text and "cpu numbers" in text and "stale" not in text


def test_percentile_by_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0


def test_drain_rate_excludes_start_up():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ended = [t0] * 4 + [t0 + timedelta(seconds=1)] * 4 + [t0 + timedelta(seconds=2)] * 4
    assert rate_from_end_times(ended) == 4.0  # 8 jobs after the first batch, in 2 s

"""The command line's formatting and progress output (mlxollama/cli/format.py, progress.py): no server."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from mlxollama.cli.format import go_duration, human_bytes, human_number, human_time, summary_lines, table
from mlxollama.cli.progress import Bar


def test_human_sizes_numbers_and_times():
    assert [human_bytes(n) for n in (0, 999, 1000, 1500, 269_600_000, 2_019_393_189, 65_290_180_781)] == [
        "0 B",
        "999 B",
        "1 KB",
        "1.5 KB",
        "269 MB",
        "2.0 GB",
        "65 GB",
    ]
    assert human_bytes(270_000_000) == "270 MB" and human_bytes(1_300_000_000) == "1.3 GB"
    assert [human_number(n) for n in (123_200, 22_000_000, 567_700_000, 3_212_749_888, 8_000_000_000)] == [
        "123K",
        "22M",
        "567.70M",
        "3.2B",
        "8B",
    ]
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ago = lambda **kw: human_time(now - timedelta(**kw), now=now)  # noqa: E731
    assert ago(seconds=0.5) == "Less than a second ago"
    assert ago(seconds=30) == "30 seconds ago"
    assert ago(seconds=90) == "About a minute ago"
    assert ago(minutes=2) == "2 minutes ago"
    assert ago(hours=3) == "3 hours ago"
    assert ago(days=3) == "3 days ago"
    assert ago(days=20) == "2 weeks ago"
    assert human_time(now + timedelta(minutes=4, seconds=59), now=now) == "4 minutes from now"
    assert human_time(now + timedelta(days=365 * 200), now=now) == "Forever"


def test_go_durations_and_verbose_summary():
    assert [go_duration(n) for n in (0, 999, 1_500, 41_369_774, 2_617_759_579, 62_500_000_000, 3_723_000_000_000)] == [
        "0s",
        "999ns",
        "1.5µs",
        "41.369774ms",
        "2.617759579s",
        "1m2.5s",
        "1h2m3s",
    ]
    lines = summary_lines(
        {
            "total_duration": 13_143_397_239,
            "load_duration": 2_617_759_579,
            "prompt_eval_count": 22,
            "prompt_eval_duration": 41_369_774,
            "eval_count": 2026,
            "eval_duration": 10_482_576_141,
        }
    )
    assert lines == [
        "total duration:       13.143397239s",
        "load duration:        2.617759579s",
        "prompt eval count:    22 token(s)",
        "prompt eval duration: 41.369774ms",
        "prompt eval rate:     531.79 tokens/s",
        "eval count:           2026 token(s)",
        "eval duration:        10.482576141s",
        "eval rate:            193.27 tokens/s",
    ]


def test_table_and_progress_bar_layout():
    out = table([["tiny:latest", "be9d174b615d", "262 KB", "2 minutes ago"]], header=["NAME", "ID", "SIZE", "MODIFIED"])
    assert out == (
        "NAME           ID              SIZE      MODIFIED         \n"
        "tiny:latest    be9d174b615d    262 KB    2 minutes ago    \n"
    )
    bar = Bar("pulling 8dde1b6d8b85:", 270_000_000, 270_000_000)
    line = bar.render(80)
    assert (
        line.startswith("pulling 8dde1b6d8b85: 100% ▕██") and "▏ 270 MB" in line and len(line) == 79
    )  # one column spare, as in ollama
    half = Bar("pulling 8dde1b6d8b85:", 270_000_000, 0)
    half.set(135_000_000)
    assert " 50% ▕" in half.render(80) and "135 MB/270 MB" in half.render(80)


def test_pull_progress_lines_without_a_terminal(capsys):
    from types import SimpleNamespace

    from mlxollama.cli.progress import pull_with_progress

    def r(status, digest=None, total=None, completed=None):
        return SimpleNamespace(status=status, digest=digest, total=total, completed=completed)

    big, small = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32

    class FakeClient:
        def pull(self, name, insecure=False, stream=True):
            yield r("pulling manifest")
            yield r("pulling abababababab", big, 269_600_000)  # announcement only: no bar yet
            for done in (100_000_000, 269_600_000):
                yield r("pulling abababababab", big, 269_600_000, done)
            yield r("pulling cdcdcdcdcdcd", small, 512, 512)
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                yield r(status)

    pull_with_progress(FakeClient(), "x")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "pulling manifest"
    assert re.fullmatch(r"pulling abababababab: 100% ▕█+▏ 269 MB", lines[1])
    assert re.fullmatch(r"pulling cdcdcdcdcdcd: 100% ▕█+▏  512 B", lines[2])
    assert lines[3:] == ["verifying sha256 digest", "writing manifest", "success"]

"""Progress bars and spinners for pull, push, create and convert, shaped like the `ollama` CLI's."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

from .format import go_duration, human_bytes

SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def term_width(stream=None) -> int:
    stream = stream or sys.stderr
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return shutil.get_terminal_size((80, 24)).columns if stream.isatty() else 80


def _format_eta(seconds: float) -> str:
    if seconds >= 100 * 3600:
        return "99h+"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60)}m"
    s = int(round(seconds))
    return go_duration(s * 1_000_000_000)


class Bar:
    """One layer's progress: `pulling 8dde1b6d8b85: 42% ▕███      ▏ 113 MB/270 MB  12 MB/s  13s`."""

    def __init__(self, message: str, total: int, completed: int = 0):
        self.message = message
        self.total = max(int(total or 0), 0)
        self.initial = self.current = int(completed or 0)
        self.started = time.monotonic()
        self.stopped: float | None = self.started if self.current >= self.total else None
        self._buckets: list[tuple[float, int]] = []

    @property
    def done(self) -> bool:
        return self.stopped is not None

    def set(self, value: int) -> None:
        value = min(int(value or 0), self.total)
        self.current = value
        now = time.monotonic()
        if value >= self.total and self.stopped is None:
            self.stopped = now
        # a rate over the last ~10 s, sampled once a second, so it follows the network
        if not self._buckets or now - self._buckets[-1][0] > 1:
            self._buckets.append((now, value))
            del self._buckets[:-10]

    def percent(self) -> float:
        return self.current / self.total * 100 if self.total > 0 else 0.0

    def rate(self) -> float:
        if self.stopped is not None:
            num, den = self.current - self.initial, round(self.stopped - self.started)
        elif len(self._buckets) == 1:
            num, den = self._buckets[0][1] - self.initial, round(self._buckets[0][0] - self.started)
        elif self._buckets:
            (t0, v0), (t1, v1) = self._buckets[0], self._buckets[-1]
            num, den = v1 - v0, round(t1 - t0)
        else:
            return 0.0
        return num / den if den else 0.0

    def render(self, width: int) -> str:
        pre = (self.message.strip() + " " if self.message else "") + f"{self.percent():3.0f}%"
        rate = self.rate()
        if self.stopped is None:
            suf = f"{human_bytes(self.current):>6}/{human_bytes(self.total):>6}"
        else:
            suf = f"{human_bytes(self.total):>6}" + " " * 7
        if self.stopped is None and rate > 0:
            suf += f"  {human_bytes(int(rate)):>6}/s"
            suf += f"  {_format_eta((self.total - self.current) / rate):>6}"
        else:
            suf += " " * 18
        room = max(width - len(pre) - len(suf) - 5, 0)
        filled = int(room * self.percent() / 100)
        return f"{pre} ▕{'█' * filled}{' ' * (room - filled)}▏ {suf}"


class Spinner:
    def __init__(self, message: str = ""):
        self.message = message
        self.started = time.monotonic()
        self.stopped = False

    @property
    def done(self) -> bool:
        return self.stopped

    def stop(self) -> None:
        self.stopped = True

    def render(self, width: int) -> str:
        text = self.message.strip() + " " if self.message else ""
        if not self.stopped:
            frame = int((time.monotonic() - self.started) * 10) % len(SPINNER_FRAMES)
            text += SPINNER_FRAMES[frame] + " "
        return text


class Progress:
    """A block of status lines (spinners and bars) on stderr.

    On a terminal it is redrawn in place ten times a second, as `ollama pull` does. Elsewhere (a
    log, a pipe, a test) each line is printed once, when it is finished, so logs stay readable.
    """

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.states: list = []
        self._printed: set[int] = set()
        self._lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.live:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    def add(self, state) -> None:
        with self._lock:
            if not self.live:
                self._flush_finished(final=False)
            self.states.append(state)

    def stop_spinners(self) -> None:
        for s in self.states:
            if isinstance(s, Spinner):
                s.stop()

    def spinner(self, message: str) -> Spinner:
        self.stop_spinners()
        sp = Spinner(message)
        self.add(sp)
        return sp

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        width = term_width(self.stream)
        height = shutil.get_terminal_size((80, 24)).lines
        buf = ["\033[?25l"]
        if self._lines > 1:
            buf.append(f"\033[{self._lines - 1}A")
        buf.append("\033[1G")
        visible = self.states[-height:]
        buf.append("\n".join(s.render(width) + "\033[K" for s in visible))
        buf.append("\033[?25h")
        self._lines = len(visible)
        self.stream.write("".join(buf))
        self.stream.flush()

    def _flush_finished(self, final: bool) -> None:
        for i, s in enumerate(self.states):
            if i in self._printed:
                continue
            if final or s.done or (isinstance(s, Spinner) and i < len(self.states) - 1):
                if isinstance(s, Spinner):
                    s.stop()
                self.stream.write(s.render(80).rstrip() + "\n")
                self._printed.add(i)
        self.stream.flush()

    def stop(self, clear: bool = False) -> None:
        """Stop rendering; `clear` erases the block (used for the "thinking" spinner)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            for s in self.states:
                if isinstance(s, Spinner):
                    s.stop()
            if not self.live:
                if not clear:
                    self._flush_finished(final=True)
                return
            if clear:
                if self._lines:
                    up = f"\033[{self._lines - 1}A" if self._lines > 1 else ""
                    self.stream.write(up + "\033[1G\033[J")
            elif self.states:
                self._draw()
                self.stream.write("\n")
            self.stream.flush()


def pull_with_progress(c, name: str, insecure: bool = False) -> None:

    p = Progress(sys.stderr)
    bars: dict[str, Bar] = {}
    status = None
    try:
        for r in c.pull(name, insecure=insecure, stream=True):
            if r.digest:
                # the first message for a layer (nothing downloaded yet) only announces it
                if not r.completed:
                    continue
                p.stop_spinners()
                bar = bars.get(r.digest)
                if bar is None:
                    short = r.digest.removeprefix("sha256:").strip()[:12]
                    bar = bars[r.digest] = Bar(f"pulling {short}:", r.total or 0, r.completed)
                    p.add(bar)
                bar.set(r.completed)
            elif r.status != status:
                status = r.status
                p.spinner(status or "")
    finally:
        p.stop()


class ProgressUI:
    """Push, create and convert: a bar per digest (even before any bytes), a spinner per status."""

    def __init__(self, default_verb: str):

        self.verb = default_verb
        self.p = Progress(sys.stderr)
        self.bars: dict = {}
        self.status = None

    def __call__(self, r) -> None:

        get = r.get if isinstance(r, dict) else (lambda k: getattr(r, k, None))
        digest, status = get("digest"), get("status")
        if digest:
            self.p.stop_spinners()
            bar = self.bars.get(digest)
            if bar is None:
                msg = status or f"{self.verb} {digest.removeprefix('sha256:')[:12]}..."
                bar = self.bars[digest] = Bar(msg, get("total") or 0, get("completed") or 0)
                self.p.add(bar)
            bar.set(get("completed") or 0)
        elif status != self.status:
            self.status = status
            self.p.spinner(status or "")

    def stop(self) -> None:
        self.p.stop()


def progress_stream(responses, default_verb: str) -> None:
    ui = ProgressUI(default_verb)
    try:
        for r in responses:
            ui(r)
    finally:
        ui.stop()

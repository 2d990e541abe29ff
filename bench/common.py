"""What the benchmarks share: timing with robust statistics, the machine's description and load, the test
photos (made in memory from a small fixture, never written to disk), and tables for the terminal or
markdown."""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.settings import Settings

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fr_obama.jpg"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- command lines ---------------------------------------------------------------------------------
def parser_for(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--repeats", type=int, default=10, help="measured runs after a warm-up")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads in this process (0: as the service sets them, see threads_per_edit)",
    )
    return parser


def use_threads(threads: int) -> None:
    """The in-process benchmarks run with the service's torch threads unless told otherwise."""
    torch.set_num_threads(threads or Settings.from_env().threads_per_edit())


# ---- statistics ------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with few samples, p99 is the slowest one, never interpolated."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(np.ceil(q / 100 * len(ordered))) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Samples:
    """Repeated measurements of one thing: wall-clock seconds, and CPU seconds of this process."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.wall, q)


def measure(fn, repeats: int, warmup: int = 1) -> Samples:
    """Runs `fn` `warmup` times unmeasured, then `repeats` times, timing each run."""
    for _ in range(warmup):
        fn()
    samples = Samples()
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        samples.cpu.append(time.process_time() - cpu)
        samples.wall.append(time.perf_counter() - wall)
    return samples


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, Samples]:
    """Like `measure` for several alternatives, run in turn, so that a change in the machine's load hits
    them all alike and their ratio stays fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: Samples() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            out[name].cpu.append(time.process_time() - cpu)
            out[name].wall.append(time.perf_counter() - wall)
    return out


# ---- the machine -----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "usable cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "load average (1 min)": round(os.getloadavg()[0], 2),
    }


def machine_line() -> str:
    m = machine()
    return (
        f"cores: {m['cores']} ({m['usable cores']} usable)   cpu: {m['cpu']}   torch {m['torch']}   "
        f"torch threads: {m['torch threads']}   load average: {m['load average (1 min)']}"
    )


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _process_times() -> dict[int, float]:
    times = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                times[int(entry.name)] = process_cpu_seconds(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass  # the process ended meanwhile
    return times


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    words = [w for w in words if w]
    return " ".join([Path(words[0]).name, *words[1:4]]) if words else "?"


class MachineLoad:
    """How busy the machine was with other work while a benchmark ran: all cores' busy time minus what
    the benchmark's own processes used, and the processes that used the most."""

    def __init__(self) -> None:
        self.start_wall = time.perf_counter()
        self.start_busy = _busy_seconds()
        self.start_own = process_cpu_seconds(os.getpid())
        self.start_processes = _process_times()

    def other_cores(self, extra_own_seconds: float = 0.0) -> tuple[float, float]:
        """(cores busy with other work on average, cores used by the benchmark on average)."""
        wall = time.perf_counter() - self.start_wall
        own = process_cpu_seconds(os.getpid()) - self.start_own + extra_own_seconds
        busy = _busy_seconds() - self.start_busy
        return max(0.0, busy - own) / wall, own / wall

    def busiest_others(self, count: int = 3) -> list[tuple[str, float]]:
        """The other processes that used the most CPU during the run: (command, cores on average)."""
        wall = time.perf_counter() - self.start_wall
        now = _process_times()
        used = {
            pid: now[pid] - start for pid, start in self.start_processes.items() if pid in now and pid != os.getpid()
        }
        top = sorted(used, key=used.get, reverse=True)[:count]
        return [(_command(pid), used[pid] / wall) for pid in top if used[pid] > 0.1 * wall]


# ---- test photos -----------------------------------------------------------------------------------
def _on_canvas(face_photo: Image.Image, size: tuple[int, int], face_height: int, seed: int) -> np.ndarray:
    """The fixture scaled to `face_height` rows, centred on a grey canvas, with sensor-like noise so that
    the JPEG is about as large as a phone camera's (a few MB at 12 MP)."""
    scale = face_height / face_photo.height
    scaled = face_photo.resize((round(face_photo.width * scale), face_height), Image.LANCZOS)
    canvas = Image.new("RGB", size, (118, 124, 131))
    canvas.paste(scaled, ((size[0] - scaled.width) // 2, (size[1] - scaled.height) // 2))
    noise = np.random.default_rng(seed).integers(-9, 10, (size[1], size[0], 3), dtype=np.int16)
    return np.clip(np.asarray(canvas, np.int16) + noise, 0, 255).astype(np.uint8)


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class TestPhoto:
    name: str
    rgb: np.ndarray
    data: bytes  # the JPEG as uploaded

    @property
    def label(self) -> str:
        h, w = self.rgb.shape[:2]
        return f"{self.name} ({w}x{h}, {len(self.data) / 1e6:.1f} MB)"


def test_photos() -> list[TestPhoto]:
    """A 1-megapixel selfie (portrait, the face fills most of the frame) and a 12-megapixel phone photo
    (4000 x 3000, the face scaled up to about a quarter of the height)."""
    with Image.open(FIXTURE) as image:
        face = image.convert("RGB")
    photos = []
    for name, size, face_height in (("1 MP selfie", (864, 1152), 1080), ("12 MP photo", (4000, 3000), 2400)):
        rgb = _on_canvas(face, size, face_height, seed=len(photos))
        photos.append(TestPhoto(name, rgb, jpeg_bytes(rgb)))
    return photos


# ---- tables ----------------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells) -> None:
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        widths = [max(len(str(c)) for c in column) for column in zip(self.columns, *self.rows)]
        lines = [
            self.title,
            "  ".join(c.ljust(w) for c, w in zip(self.columns, widths)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in self.rows]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + self.notes
        return "\n".join(lines)


def print_tables(tables: list[Table]) -> None:
    for table in tables:
        print()
        print(table.text(), flush=True)

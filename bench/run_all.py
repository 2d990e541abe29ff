"""Every benchmark in one run: `python -m bench.run_all [--markdown docs/PERFORMANCE.md]` (`make bench`).

In-process first (stages of one request, before/after the speed-ups, baselines, FLOPs against the
measured peak), then end to end through HTTP (latency and throughput at 1, 4 and 16
clients, errors, the server's memory over many requests), then the goals with a verdict for each. The
repeat counts are flags; the defaults take a few minutes on an otherwise idle 2-core machine.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from bench import flops, http_load, stages
from bench.common import (
    MachineLoad,
    Table,
    machine,
    machine_line,
    parser_for,
    percentile,
    print_tables,
    test_photos,
    use_threads,
)

P50_GOAL_MS = 150.0
MEMORY_FLAT_MB = 5.0  # fitted growth over the memory run below this, or below 2% of the RSS, counts as flat
MEMORY_FLAT_SHARE = 0.02


def goals_table(http: dict, levels: tuple[int, ...], selfie: str) -> Table:
    table = Table("Goals (1 MP selfie, one face)", ["goal", "measured", "met"])
    single = http["latency"].get((selfie, 1))
    if single:
        p50 = percentile(single.latencies, 50) * 1000 if single.latencies else float("inf")
        table.add(
            f"p50 under {P50_GOAL_MS:.0f} ms at 1 client",
            f"{p50:.0f} ms",
            "yes" if p50 < P50_GOAL_MS and single.ok == single.sent else "no",
        )
    top = max(levels)
    for key, crowd in http["latency"].items():
        if key[:2] == (selfie, top):
            setting = key[2] if len(key) > 2 else f"MAX_QUEUE={http['settings'].max_queue}"
            table.add(
                f"no error at {top} clients ({setting})",
                f"{crowd.sent - crowd.ok} of {crowd.sent} failed ({crowd.errors})",
                "yes" if crowd.ok == crowd.sent else "no",
            )
    memory = http["memory"]
    if memory:
        growth = memory["later_slope"] * memory["requests"]
        limit = max(MEMORY_FLAT_MB, MEMORY_FLAT_SHARE * memory["mean_mb"])
        table.add(
            "memory does not grow with requests",
            f"{growth:+.1f} MB per {memory['requests']} requests in the second half (mean RSS "
            f"{memory['mean_mb']:.0f} MB)",
            "yes" if growth < limit else "no",
        )
        table.notes.append(
            f"Memory counts as not growing when the least-squares slope of RSS over the second half "
            f"of the memory run, times its length, is under {MEMORY_FLAT_MB:.0f} MB or "
            f"{100 * MEMORY_FLAT_SHARE:.0f}% of the mean RSS, whichever is larger."
        )
    return table


def machine_table(load: MachineLoad, server_cpu: float) -> Table:
    info = machine()
    other, own = load.other_cores(server_cpu)
    table = Table("Machine", ["", ""])
    table.add("cores", f"{info['cores']} ({info['usable cores']} usable by this process)")
    table.add("CPU (/proc/cpuinfo)", info["cpu"])
    table.add("torch", f"{info['torch']}; torch threads in the benchmark process: {info['torch threads']}")
    table.add(
        "other work during the run",
        f"{other:.2f} cores busy on average with other processes (the benchmark and its server: {own:.2f} cores)",
    )
    busiest = ", ".join(f"`{command}` ({cores:.2f} cores)" for command, cores in load.busiest_others())
    table.add("busiest other processes", busiest or "none")
    table.add("load average at the end", f"{info['load average (1 min)']}")
    return table


def markdown(command: str, tables: list[Table], started: str) -> str:
    parts = [
        "# Performance",
        "",
        "Produced by `bench/` with one command; every figure below comes from the same run:",
        "",
        "```",
        command,
        "```",
        "",
        f"Run started {started} UTC. The machine, and how much other work shared it, are in the first table. "
        "Wall-clock figures depend on that other work; CPU figures (CPU time of the process doing the work) "
        "much less, and ratios from interleaved runs least: compare those across machines.",
        "",
    ]
    parts += [table.markdown() + "\n" for table in tables]
    parts += [
        "## How to read this",
        "",
        "- *Stages* run in-process through `AgeEditor` and `app.imaging`, exactly as the service runs a "
        "request; *share of CPU* shows the slowest stage.",
        "- *Speed-ups*: the previous code paths are kept inside `bench/stages.py` as the baseline and run "
        "interleaved with the current ones, so both see the same load.",
        "- *End to end* starts `uvicorn app.main:app` on 127.0.0.1 with the settings in its table's note: with "
        "more clients than MAX_CONCURRENCY + MAX_QUEUE, the service answers 503 at once instead of queueing "
        "without bound, and those answers count as errors; a second server whose queue holds every client then "
        "takes the most clients again.",
        "- Percentiles are nearest-rank: with fewer than 100 requests, p99 is the slowest request.",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="runs of each side of a comparison")
    parser.add_argument("--no-http", action="store_true", help="skip the end-to-end runs")
    http_load.add_arguments(parser)
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    command = "python -m bench.run_all " + " ".join(sys.argv[1:] if argv is None else argv)
    use_threads(args.threads)
    load = MachineLoad()
    print(machine_line(), flush=True)

    editor = stages.served_editor(args.weights)
    photos = test_photos()
    tables, _ = stages.stage_tables(editor, photos, args.repeats, args.baseline_repeats)
    tables.append(flops.flops_table(editor, photos[0], args.repeats))
    print_tables(tables)

    server_cpu = 0.0
    if not args.no_http:
        http_tables, http = http_load.run(args)
        server_cpu = http["server_cpu"]
        print_tables(http_tables)
        goals = goals_table(http, tuple(int(c) for c in args.clients.split(",")), photos[0].name)
        print_tables([goals])
        tables = [goals] + tables + http_tables
    machine_info = machine_table(load, server_cpu)
    print_tables([machine_info])
    tables = [machine_info] + tables
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(command, tables, started))
        print(f"\nwrote {args.markdown}")


if __name__ == "__main__":
    main()

"""How much arithmetic the model does, and how close to the machine's peak it runs.

    python -m bench.flops [--weights weights] [--repeats 10]

Floating-point operations are counted with torch.utils.flop_counter.FlopCounterMode (convolutions and
matrix products; elementwise work is not counted). The peak is estimated in the same run from a
2048 x 2048 float32 matrix product (torch.mm), the fastest thing the CPU does. Rates are given per
wall-clock second and per CPU second; the second is what to compare when other work shares the cores.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import (
    Samples,
    Table,
    TestPhoto,
    machine_line,
    measure,
    ms,
    parser_for,
    print_tables,
    test_photos,
    use_threads,
)
from bench.stages import face_crops, served_editor
from model.editor import AgeEditor

PEAK_SIDE = 2048


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def rates(flops: int, samples: Samples) -> tuple[float, float]:
    """GFLOP/s per wall-clock second and per CPU second."""
    return flops / samples.median / 1e9, flops / samples.cpu_median / 1e9


def peak(repeats: int) -> tuple[float, float]:
    a, b = torch.rand(PEAK_SIDE, PEAK_SIDE), torch.rand(PEAK_SIDE, PEAK_SIDE)
    return rates(2 * PEAK_SIDE**3, measure(lambda: torch.mm(a, b), repeats))


def flops_table(editor: AgeEditor, selfie: TestPhoto, repeats: int) -> Table:
    crops = face_crops(editor, selfie)
    batch = crops.repeat(8, 1, 1, 1)
    flow = editor.flow
    peak_wall, peak_cpu = peak(repeats)
    table = Table(
        f"Arithmetic: FLOPs and achieved rate (torch threads: {torch.get_num_threads()})",
        ["work", "GFLOP", "median ms", "GFLOP/s", "GFLOP per CPU-s", "of peak per CPU-s"],
    )
    table.add(
        f"peak: torch.mm {PEAK_SIDE}x{PEAK_SIDE} float32",
        f"{2 * PEAK_SIDE**3 / 1e9:.2f}",
        "",
        f"{peak_wall:.1f}",
        f"{peak_cpu:.1f}",
        "100%",
    )
    cases = {
        "flow encode + decode, 1 face": lambda: flow.decode(flow.encode(crops)),
        "flow encode + decode, 8 faces": lambda: flow.decode(flow.encode(batch)),
        "edit 1 face (encode, read age, move, decode)": lambda: editor.edit(crops, years=20),
        f"detect, {selfie.name}": lambda: editor.find_faces(selfie.rgb),
    }
    with torch.inference_mode():
        for name, fn in cases.items():
            flops = count_flops(fn)
            samples = measure(fn, repeats)
            per_wall, per_cpu = rates(flops, samples)
            table.add(
                name,
                f"{flops / 1e9:.3f}",
                ms(samples.median),
                f"{per_wall:.1f}",
                f"{per_cpu:.1f}",
                f"{100 * per_cpu / peak_cpu:.0f}%",
            )
    table.notes.append(
        "Peak: the rate of a large float32 matrix product measured in this run, not a datasheet "
        "figure. Elementwise work is not counted as FLOPs."
    )
    return table


def main() -> None:
    args = parser_for(__doc__).parse_args()
    use_threads(args.threads)
    print(machine_line())
    editor = served_editor(args.weights)
    print_tables([flops_table(editor, test_photos()[0], args.repeats)])


if __name__ == "__main__":
    main()

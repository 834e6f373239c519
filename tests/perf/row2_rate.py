"""How often row 2 (fresh p50 <= 2x the floor) holds: the bench's measurement, N times in a row.

`python -m tests.perf.row2_rate [N]` starts one bench stack and runs `measure_fresh` (200
rounds, as `make bench` does) N times (default 12). Each line is one reading, with its bootstrap
interval, worker CPU and the host's share stolen. The last line is the count over the line. One
`make bench` reading is one draw of this; a rate, not a single run, says whether the line is met.
"""

from __future__ import annotations

import sys
import time

from tests.perf.bench import body_for, call, fresh_end, measure_fresh, stack_running

ROUNDS = 200  # as in make bench


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    ratios: list[float] = []
    with stack_running() as stack:
        for i in range(10):  # connections and caches up, as the bench does
            call(stack.http, body_for(i, "warm", fresh_end()))
        for k in range(runs):
            f = measure_fresh(stack, ROUNDS)
            ratio = f["ours_p50"] / f["floor_p50"]
            low, high = f["floor_ratio_interval"]
            ratios.append(ratio)
            print(
                f"{k + 1:2d} {time.strftime('%H:%M:%S')} ours {f['ours_p50'] * 1000:.2f} ms"
                f" floor {f['floor_p50'] * 1000:.2f} ms ratio {ratio:.2f}x ({low:.2f}-{high:.2f}x)"
                f" worker CPU {f['worker_cpu_per_analysis'] * 1000:.2f} ms"
                f" reference {f['reference_cpu_per_unit'] * 1000:.3f} ms"
                f" ({f['worker_cpu_per_analysis'] / f['reference_cpu_per_unit']:.2f}x)"
                f" stolen {f['host']['stolen'] * 100:.1f} %",
                flush=True,
            )
    ratios.sort()
    over = sum(r > 2 for r in ratios)
    print(
        f"over 2x: {over} of {runs}; median {ratios[runs // 2]:.2f}x,"
        f" range {ratios[0]:.2f}-{ratios[-1]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

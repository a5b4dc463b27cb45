"""VM case: spin on the CPU until the wall-clock timer ends the run.

Run with a small `--cpu-millis`: the cgroup's cpu.max must hold the run to that share of a CPU,
so the record's cpu_time_ms stays well below its wall_time_ms, and the kernel counts throttled
periods in the run's cpu.stat.
"""
print("spinning", flush=True)
while True:
    pass

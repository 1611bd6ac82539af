"""``make bench``: the job's throughput against a plain-Python baseline, its memory
as the input grows, and its streaming latency (``python -m tools.bench --help``).

- ``baseline``: the batch job's work as a single-process loop (no Beam pipeline).
- ``batch``: runs the baseline and the pipeline on each runner as child processes
  over one generated fleet, delivering to a loopback receiver (``receiver``), and
  checks they delivered the same documents; the memory-scaling runs.
- ``runners``: the runners the pipeline is measured on (the FnApiRunner, Flink
  ``[local]``) and how each is started.
- ``proctree``: the RSS and CPU of every process of a run (the JVM and SDK
  workers of a Flink run included).
- ``streaming``: the streaming benchmark.
"""

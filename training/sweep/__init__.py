"""The sweep: candidates profiled (``profiler``), scheduled jointly (``schedule``, CP-SAT) and run (``executor``)."""

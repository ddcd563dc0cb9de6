"""The runtime of compiled mode: the executor that replays plans, memory planning, out= kernels."""

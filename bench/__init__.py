"""Benchmarks of the Skyporten relay on the local stack (`make bench` = `python -m bench.run`).

Not part of `make test`. `run.py` drives one run and writes `RESULTS.md`; `contenders.py` is what each
contender's own process runs (one process per contender, so peak RSS is per contender).
"""

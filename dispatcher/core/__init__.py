"""The pure core: task states and moves, templates, sweeps, sampling, the scheduler, outcomes.

No I/O and no clock: every module here is a function of its arguments (tests/unit/test_purity.py).
"""

"""Shared test settings: one torch thread (the suite runs beside other work on small machines,
and oversubscribed OpenMP threads slow every test several-fold) and no network downloads."""

import os

import torch

os.environ.setdefault("LTGEN_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the cap of threads=auto in the cells tests run
torch.set_num_threads(1)

"""Shared test settings: one torch thread (the suite runs beside other work on small machines,
and oversubscribed OpenMP threads slow every test several-fold) and no network downloads."""

import os

import torch

os.environ.setdefault("LTGEN_OFFLINE", "1")
torch.set_num_threads(1)

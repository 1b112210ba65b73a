"""Names shared by every stage: the pseudo-method of real data, metric and group names.

One place for each: the metrics write these strings into ``results.csv`` and the report reads
them back, so a renamed metric can never leave a plot reading a column that no longer exists.
"""

REAL = "real"  # pseudo-method: real held-out images (metric floor) and the real-LT classifier

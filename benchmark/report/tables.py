"""What every report reads from the results table: the key of one leaderboard table and the
placement of feature-free rows (downstream accuracies) into the tables of their data."""

from __future__ import annotations

import pandas as pd

from benchmark.core.names import NO_FEATURES

TABLE_KEY = ["dataset", "profile", "imbalance", "protocol", "feature_space", "reference"]


def attach_feature_free_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Downstream accuracies use no feature space (recorded as 'none'); show them in every table
    of the same data, protocol and reference instead of a table of their own."""
    free = table["feature_space"].astype(str) == NO_FEATURES
    if not free.any():
        return table
    keys = ["dataset", "profile", "imbalance", "protocol", "reference"]
    spaces = table.loc[~free, keys + ["feature_space"]].drop_duplicates()
    moved = table[free].drop(columns="feature_space").merge(spaces, on=keys, how="left")
    moved["feature_space"] = moved["feature_space"].fillna(NO_FEATURES)
    return pd.concat([table[~free], moved[table.columns]], ignore_index=True)

"""What every report reads from the results table: the key of one leaderboard table and the
placement of feature-free rows (downstream accuracies) into the tables of their data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.core.names import CLASS, FEATURE_FREE, NO_FEATURES, TRAIN_COUNT

TABLE_KEY = ["dataset", "profile", "imbalance", "protocol", "feature_space", "reference"]


def each_table(table: pd.DataFrame):
    """(key dict, its rows) of every leaderboard table in ``table``, feature-free rows placed in theirs."""
    table = attach_feature_free_rows(table)
    for key_values, block in table.groupby(TABLE_KEY, dropna=False):
        yield dict(zip(TABLE_KEY, key_values)), block


def rows_of(table: pd.DataFrame, key: dict) -> pd.DataFrame:
    """The rows of one leaderboard table: those whose TABLE_KEY columns equal ``key`` (floats up to rounding)."""
    mask = np.ones(len(table), dtype=bool)
    for col in TABLE_KEY:
        value = key[col]
        if isinstance(value, float):
            mask &= np.isclose(table[col].astype(float), value)
        else:
            mask &= (table[col].astype(str) == str(value)).to_numpy()
    return table[mask]


def attach_feature_free_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Downstream accuracies and pixel-space memorisation use no feature network (recorded as
    'none' / 'pixel'); show them in every table of the same data, protocol and reference instead
    of a table of their own."""
    free = table["feature_space"].astype(str).isin(FEATURE_FREE)
    if not free.any():
        return table
    keys = ["dataset", "profile", "imbalance", "protocol", "reference"]
    spaces = table.loc[~free, keys + ["feature_space"]].drop_duplicates()
    moved = table[free].drop(columns="feature_space").merge(spaces, on=keys, how="left")
    moved["feature_space"] = moved["feature_space"].fillna(NO_FEATURES)
    return pd.concat([table[~free], moved[table.columns]], ignore_index=True)


def class_info(table: pd.DataFrame) -> pd.DataFrame:
    """Per class of one split (the ``train_count`` rows): columns count, group, name, indexed by class.

    The name comes from the rows' note (``group=...;name=...``); tables written before names were
    recorded get the class index as the name."""
    rows = table[(table["metric"] == TRAIN_COUNT) & (table["group"] == CLASS)].drop_duplicates("class")
    info = pd.DataFrame(index=pd.Index(rows["class"].astype(int).to_numpy(), name="class"))
    info["count"] = rows["value"].to_numpy(float)
    fields = [dict(p.split("=", 1) for p in str(n).split(";") if "=" in p) for n in rows["note"]]
    info["group"] = [f.get("group", "") for f in fields]
    info["name"] = [f.get("name", str(c)) for f, c in zip(fields, info.index)]
    return info.sort_index()


def class_label(cls: int, name: str) -> str:
    """'3' for digits-like names that are the index itself, else '3 Dress'."""
    return str(cls) if str(name) == str(cls) else f"{cls} {name}"

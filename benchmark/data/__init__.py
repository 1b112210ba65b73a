"""Data layer: image sources, LDAM-identical long-tailed subsets, class groups.

Typical use::

    from benchmark.core.config import DataConfig
    from benchmark.data import build_dataset, data_table

    ds = build_dataset(DataConfig(dataset="fashion-mnist", imbalance=0.01))
    print(data_table(ds), ds.fingerprint)

For your own pipeline, the label-array functions ``class_counts``, ``select_longtail``,
``split_fingerprint`` and ``assign_groups`` need nothing else.  New datasets register a
loader in ``DATASETS`` (see :mod:`benchmark.data.sources`) or use ``imagefolder:PATH`` or
``listfile:LIST``.
Environment: ``$LTGEN_DATA_ROOT`` (default data root), ``$LTGEN_OFFLINE=1`` (never download).
"""

from benchmark.data import builtin, imagefolder, listfile  # noqa: F401  (register the built-in sources)
from benchmark.data.dataset import (
    LongTailDataset,
    build_dataset,
    computable_lines,
    data_table,
    describe_groups,
    reference_counts,
)
from benchmark.data.longtail import (
    GROUP_RULES,
    PROFILES,
    assign_groups,
    check_imbalance,
    class_counts,
    read_counts_file,
    select_longtail,
    smallest_valid_imbalance,
    split_fingerprint,
)
from benchmark.data.reference import REFERENCE_PROTOCOLS
from benchmark.data.sources import (
    DATASETS,
    RESIZE_METHODS,
    ImageSet,
    RawSource,
    SourceData,
    balanced_holdout,
    clear_source_cache,
    default_data_root,
    get_source,
    resize_images,
)

__all__ = [
    "DATASETS",
    "GROUP_RULES",
    "PROFILES",
    "REFERENCE_PROTOCOLS",
    "RESIZE_METHODS",
    "ImageSet",
    "LongTailDataset",
    "RawSource",
    "SourceData",
    "assign_groups",
    "balanced_holdout",
    "build_dataset",
    "check_imbalance",
    "class_counts",
    "clear_source_cache",
    "computable_lines",
    "data_table",
    "default_data_root",
    "describe_groups",
    "get_source",
    "read_counts_file",
    "reference_counts",
    "resize_images",
    "select_longtail",
    "smallest_valid_imbalance",
    "split_fingerprint",
]

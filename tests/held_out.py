"""A small synthetic held-out folder, as the shard preparation writes the server's: for tests that evaluate
a model centrally without IMDB."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fedimdb.artifacts import sha256_file, write_json_atomic
from fedimdb.data import MANIFEST, SPLIT_FILES

RECIPE = {"source": "synthetic", "num-partitions": 1}


def held_out_folder(folder: Path, rows: int = 40) -> Path:
    """A server folder as the preparation writes it: test.parquet and a manifest with its sha256 and recipe."""
    folder.mkdir(parents=True)
    labels = [i % 3 % 2 for i in range(rows)]
    texts = [
        ("a great movie, loved it" if y else "a boring film, awful acting") + f" #{i}" for i, y in enumerate(labels)
    ]
    pq.write_table(pa.table({"text": texts, "label": labels}), folder / SPLIT_FILES["test"])
    files = {SPLIT_FILES["test"]: {"rows": rows, "sha256": sha256_file(folder / SPLIT_FILES["test"])}}
    write_json_atomic(folder / MANIFEST, {"recipe": RECIPE, "files": files})
    return folder

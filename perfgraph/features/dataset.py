"""Stage graphs of a whole store, built once and cached on disk beside it.

Building graphs means reading every featurization out of SQLite and log-transforming it; a model
selection run trains many models on the same data, and an epoch must never touch SQLite. Like PyG's
``InMemoryDataset``, :class:`StageGraphDataset` keeps all graphs in a few concatenated tensors and
writes that processed form once. The cache file is named after a hash of the database's bytes (and
of its write-ahead log), the feature-schema version and the graph format, so any change to the data
or to the featurization makes a new cache instead of serving a stale one. The cache holds only plain
tensors, lists and strings and is read with ``torch.load(weights_only=True)``.

>>> dataset = StageGraphDataset.from_store("data/perfgraph.db")        # doctest: +SKIP
>>> parts = split_samples(list(dataset), "fixed")                      # doctest: +SKIP
>>> GNNCostModel(conv="sage").fit(parts.train, parts.valid)            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch_geometric.data import Data

from perfgraph.data.records import Sample
from perfgraph.features.graphs import GRAPH_FORMAT_VERSION, sample_to_graph
from perfgraph.features.layout import FEATURE_SCHEMA_VERSION

_FORMAT = "perfgraph-graphs"
_FIELDS = ("x", "edge_index", "edge_attr", "y", "pipeline_id", "schedule_id", "machine_x")


class StageGraphDataset(Sequence[Data]):
    """An immutable, indexable collection of stage graphs (see :func:`sample_to_graph`)."""

    def __init__(self, graphs: Sequence[Data]) -> None:
        self._graphs = list(graphs)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> StageGraphDataset:
        return cls([sample_to_graph(s) for s in samples])

    @classmethod
    def from_store(
        cls, db_path: str | Path, cache_dir: str | Path | None = None, measured_only: bool = True
    ) -> StageGraphDataset:
        """The store's samples as graphs, from the cache when it matches the database's content.

        ``cache_dir`` defaults to ``<db folder>/cache/graphs``. Older cache files of the same
        database are removed when a new one is written.
        """
        db_path = Path(db_path)
        if not db_path.is_file():
            raise FileNotFoundError(f"db_path: no database file at {db_path}")
        cache_dir = Path(cache_dir) if cache_dir is not None else db_path.parent / "cache" / "graphs"
        key = content_key(db_path, measured_only)
        cache_file = cache_dir / f"{db_path.stem}-{key[:20]}.pt"
        if cache_file.is_file():
            try:
                return cls.load(cache_file)
            except (ValueError, KeyError, RuntimeError):
                pass  # unreadable or foreign cache: rebuild it below
        from perfgraph.data.store import Store

        with Store(db_path) as store:
            dataset = cls.from_samples(store.samples(measured_only=measured_only))
        for stale in cache_dir.glob(f"{db_path.stem}-*.pt"):
            stale.unlink(missing_ok=True)
        dataset.save(cache_file)
        return dataset

    def __len__(self) -> int:
        return len(self._graphs)

    def __getitem__(self, index: int) -> Data:  # type: ignore[override]
        return self._graphs[index]

    def __iter__(self) -> Iterator[Data]:
        return iter(self._graphs)

    def save(self, path: str | Path) -> None:
        """Write the graphs as concatenated plain tensors plus offsets (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        graphs = self._graphs
        record: dict = {
            "format": _FORMAT,
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "graph_format_version": GRAPH_FORMAT_VERSION,
            "pipeline_name": [g.pipeline_name for g in graphs],
            "family": [g.family for g in graphs],
            "machine_kind": [g.machine_kind for g in graphs],
            "node_counts": torch.tensor([g.num_nodes for g in graphs], dtype=torch.long),
            "edge_counts": torch.tensor([g.edge_index.shape[1] for g in graphs], dtype=torch.long),
        }
        for field in _FIELDS:
            dim = 1 if field == "edge_index" else 0
            parts = [getattr(g, field) for g in graphs]
            record[field] = torch.cat(parts, dim=dim) if parts else torch.empty(0)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(record, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> StageGraphDataset:
        """Read a file written by :meth:`save`; raises ``ValueError`` for another schema or format."""
        record = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a perfgraph graph cache")
        versions = (record["feature_schema_version"], record["graph_format_version"])
        if versions != (FEATURE_SCHEMA_VERSION, GRAPH_FORMAT_VERSION):
            raise ValueError(
                f"{path}: graph cache of schema/format {versions}, this perfgraph reads "
                f"{(FEATURE_SCHEMA_VERSION, GRAPH_FORMAT_VERSION)}"
            )
        node_counts = record["node_counts"].tolist()
        if not node_counts:
            return cls([])
        edge_counts = record["edge_counts"].tolist()
        xs = record["x"].split(node_counts)
        edge_indices = record["edge_index"].split(edge_counts, dim=1)
        edge_attrs = record["edge_attr"].split(edge_counts)
        graphs = [
            Data(
                x=xs[i],
                edge_index=edge_indices[i],
                edge_attr=edge_attrs[i],
                y=record["y"][i : i + 1],
                pipeline_id=record["pipeline_id"][i : i + 1],
                schedule_id=record["schedule_id"][i : i + 1],
                pipeline_name=record["pipeline_name"][i],
                family=record["family"][i],
                machine_x=record["machine_x"][i : i + 1],
                machine_kind=record["machine_kind"][i],
                num_nodes=node_counts[i],
            )
            for i in range(len(node_counts))
        ]
        return cls(graphs)


def content_key(db_path: Path, measured_only: bool = True) -> str:
    """A hex digest of the database file (and its ``-wal`` file), the schema and graph format versions."""
    digest = hashlib.sha256(f"{FEATURE_SCHEMA_VERSION}/{GRAPH_FORMAT_VERSION}/{measured_only}".encode())
    for part in (db_path, db_path.with_name(db_path.name + "-wal")):
        if part.is_file():
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()

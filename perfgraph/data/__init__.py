"""The dataset: records, the SQLite store, exports, shards and statistics."""

"""The control service (GCS): cluster metadata, KV store, pub/sub, node health."""

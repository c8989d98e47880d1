"""The node daemon (raylet): resources, worker leases, the object store, logs."""

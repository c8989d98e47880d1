"""Lower layers shared by every process role: ids, config, serialization, sessions."""

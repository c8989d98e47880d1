"""The core worker: the runtime inside the driver and every worker process."""

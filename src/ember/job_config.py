"""Ray's ``ray.job_config`` path: ``JobConfig`` for ``ember.init(job_config=...)``."""

from ember.api.job_config import JobConfig, validate_namespace

__all__ = ["JobConfig", "validate_namespace"]

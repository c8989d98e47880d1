"""Ray's ``ray.util.state.exception``."""

from ember.exceptions import RayStateApiException

__all__ = ["RayStateApiException"]

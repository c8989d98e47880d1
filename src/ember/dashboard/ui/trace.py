"""Task executions as a Chrome trace: the one implementation is ``ember.util.state.timeline``."""

from ember.util.state.timeline import chrome_trace

__all__ = ["chrome_trace"]

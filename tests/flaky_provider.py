"""A node provider for tests: the fake_multinode provider, failing while a file exists.

Named in a cluster YAML as ``provider: {type: external, module: tests.flaky_provider.FlakyProvider,
fail_while: /path}``: every launch fails while ``/path`` exists (as a cloud out of quota
would), and works once the test removes it.
"""

from __future__ import annotations

import os
from typing import Any

from ember.autoscaler.fake_multinode import FakeMultiNodeProvider
from ember.exceptions import NodeProviderError


class FlakyProvider(FakeMultiNodeProvider):
    def create_node_with_resources_and_labels(self, node_config: dict[str, Any], tags: dict[str, str], count: int,
                                              resources: dict[str, float], labels: dict[str, str]) -> dict[str, Any]:
        if os.path.exists(self.provider_config["fail_while"]):
            raise NodeProviderError("quota exceeded (simulated by the test)")
        return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)

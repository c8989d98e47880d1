"""Ray's ``ray._common`` paths that test suites import (``ember._common.test_utils``)."""

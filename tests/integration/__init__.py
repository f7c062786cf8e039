"""Integration tests on the real test engine. A package, so that a module here may share
its basename with a unit test (tests/unit/test_placement.py and
tests/integration/test_placement.py): pytest imports these as ``integration.<name>``."""

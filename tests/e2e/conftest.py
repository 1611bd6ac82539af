"""Fixtures of the e2e tier's portal tests (``tests/e2e/portal_fixtures.py``)."""

from tests.e2e.portal_fixtures import database_url, portal  # noqa: F401 - fixtures

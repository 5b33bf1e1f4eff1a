"""Fixtures: a fresh launch site per test, and one per module for runs that build on each other."""

import pytest
from launch_site import LaunchSite, make_site


@pytest.fixture
def site(tmp_path) -> LaunchSite:
    return make_site(tmp_path)


@pytest.fixture(scope="module")
def module_site(tmp_path_factory) -> LaunchSite:
    return make_site(tmp_path_factory.mktemp("launch"))

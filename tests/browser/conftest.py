from tests.e2e.conftest import tmp_path

__all__ = ["tmp_path"]  # the daemons here run as the test user too: same working folder

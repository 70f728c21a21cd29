"""The HA fault matrix runs in a pytest session of its own (scripts/run-integration runs
tests/integration, then tests/ha). It reuses the integration tier's fixtures and helpers:
that conftest is loaded here, and its names are this module's, so `from conftest import
...` means the same in both tiers. Adds a three-member etcd cluster for the session."""
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(_INTEGRATION))
_spec = importlib.util.spec_from_file_location("gantry_integration_conftest",
                                               _INTEGRATION / "conftest.py")
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)
globals().update({k: v for k, v in vars(_m).items() if not k.startswith("__")})

from testenv.etcd import EtcdCluster  # noqa: E402


@pytest.fixture(scope="session")
def etcd():
    d = Path(tempfile.mkdtemp(prefix="gantry-ha-etcd-"))
    c = EtcdCluster(str(d / "etcd"))
    c.start()
    yield c
    c.stop()
    shutil.rmtree(d, ignore_errors=True)

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))


@pytest.fixture
def toy_config():
  """The toy preset, shrunk so a step compiles and runs in seconds."""
  import adaptsegnet  # pylint: disable=g-import-not-at-top
  c = adaptsegnet.get_config("toy")
  c.model.width = 8
  c.disc.channels = (8, 8, 8, 8)
  return c

"""The architecture as a contract: import-linter checks the floors and the absence of circles that
pyproject.toml's [tool.importlinter] declares."""

import subprocess

from tests.conftest import BIN, ROOT


def test_imports_keep_the_floors_and_make_no_circles():
    checked = subprocess.run([str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "2 kept, 0 broken" in checked.stdout

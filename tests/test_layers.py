"""The architecture as a contract: import-linter checks the floors and the absence of circles that
pyproject.toml's [tool.importlinter] declares."""

import subprocess
import sys

from tests.conftest import BIN, ROOT


def test_imports_keep_the_floors_and_make_no_circles():
    checked = subprocess.run([str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "2 kept, 0 broken" in checked.stdout


def test_the_embed_jobs_driver_imports_no_model_classes():
    """The driver resolves the model from its JSON files; the model classes (~2 CPU-seconds of imports) load in the
    actors, and in a driver only for nomic-bert configs, which our classes read."""
    probe = ("import sys, raylib.embed.run as run; spec = run.resolve_spec(); run.PromptTokenizer.from_spec(spec);"
             "print(sorted(m for m in sys.modules if m.startswith('raylib.models.')));"
             "import raylib.models.nomic_bert as nomic, raylib.models.spec as spec;"
             "print(nomic.NomicBertConfig.model_type in spec.NOMIC_BERT_TYPES)")
    loaded, registered = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                                        check=True).stdout.splitlines()
    model_classes = ("encoder", "embedder", "nomic_bert", "nomic_layouts", "bidirectional")
    assert not [name for name in model_classes if f"'raylib.models.{name}'" in loaded], loaded
    assert registered == "True"

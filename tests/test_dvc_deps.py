"""dvc.yaml must list every project file whose code decides a stage's outputs: the stage
script and every mnistgen module it imports, directly or through other modules. A missing
one means an edit there leaves `dvc status` clean while the outputs are stale."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def project_imports(path: Path) -> set[str]:
    """Project files (relative paths) that the module at `path` imports, at any depth."""
    seen, todo = set(), [path.relative_to(ROOT).as_posix()]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if name.split(".")[0] not in ("mnistgen", "stages"):
                    continue
                candidate = ROOT / (name.replace(".", "/") + ".py")
                if candidate.is_file():
                    todo.append(candidate.relative_to(ROOT).as_posix())
    return seen


def script_of(stage: dict) -> Path:
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    return ROOT / (module.replace(".", "/") + ".py")


@pytest.mark.parametrize("name", STAGES)
def test_every_imported_project_file_is_a_dependency(name):
    stage = STAGES[name]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
    needed = project_imports(script_of(stage)) - {"mnistgen/__init__.py", "stages/__init__.py"}
    missing = sorted(needed - deps)
    assert not missing, f"stage {name}: dvc.yaml deps lack {missing}"
    # and no stale entry: every listed code file is really imported
    extra = sorted(d for d in deps if d.endswith(".py") and d not in needed)
    assert not extra, f"stage {name}: dvc.yaml lists {extra}, which the stage does not import"


def test_the_derivation_follows_imports_through_other_modules():
    """The check is only as good as the import walk: stages/train_gan.py never imports
    mnistgen/metrics.py itself, only through mnistgen/gan_monitor.py."""
    tree = ast.parse((ROOT / "stages/train_gan.py").read_text())
    direct = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "mnistgen.metrics" not in direct and "mnistgen.gan_monitor" in direct
    assert "mnistgen/metrics.py" in project_imports(ROOT / "stages/train_gan.py")

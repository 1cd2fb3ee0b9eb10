"""dvc.yaml lists as a stage's deps exactly the code that can change its outputs: the stage
script and every mnistgen module it imports, directly or through other modules, except the
recording layer (mnistgen/tracking/), which only writes to MLflow. A missing module means an
edit there leaves `dvc status` clean while the outputs are stale; a listed recording module
means an edit to how a run is named retrains the GAN."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, dvc

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
RECORDING = "mnistgen/tracking/"


def imports_of(rel: str) -> set[str]:
    """Project files (relative paths) that the module `rel` imports itself, at any place in
    it (a function's lazy import too)."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / rel).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] not in ("mnistgen", "stages"):
                continue
            path = name.replace(".", "/")
            for candidate in (ROOT / f"{path}.py", ROOT / path / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate.relative_to(ROOT).as_posix())
    return found


def project_imports(path: Path, into_recording: bool = False) -> set[str]:
    """Project files that the module at `path` imports, at any depth; the walk stops at the
    recording layer unless `into_recording`."""
    seen, todo = set(), [path.relative_to(ROOT).as_posix()]
    while todo:
        rel = todo.pop()
        if rel in seen or (rel.startswith(RECORDING) and not into_recording):
            continue
        seen.add(rel)
        todo += imports_of(rel)
    return seen


def script_of(stage: dict) -> Path:
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    return ROOT / (module.replace(".", "/") + ".py")


def code_deps(stage: dict) -> set[str]:
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
    return {d for d in deps if d.endswith(".py")}


@pytest.mark.parametrize("name", STAGES)
def test_every_module_that_can_change_an_output_is_a_dependency(name):
    stage = STAGES[name]
    needed = project_imports(script_of(stage)) - {"mnistgen/__init__.py", "stages/__init__.py"}
    missing = sorted(needed - code_deps(stage))
    assert not missing, f"stage {name}: dvc.yaml deps lack {missing}"
    # and no stale entry: every listed code file is really imported
    extra = sorted(code_deps(stage) - needed)
    assert not extra, f"stage {name}: dvc.yaml lists {extra}, which the stage does not import"


@pytest.mark.parametrize("name", STAGES)
def test_no_recording_module_is_a_dependency(name):
    listed = sorted(d for d in code_deps(STAGES[name]) if d.startswith(RECORDING))
    assert not listed, f"stage {name}: {listed} only record to MLflow and can change no output"


def domain_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "mnistgen").glob("*.py"))


@pytest.mark.parametrize("path", domain_modules(), ids=lambda p: p.name)
def test_the_domain_never_imports_the_recording_layer(path):
    """Else a recording module would decide outputs behind dvc.yaml's back."""
    reached = project_imports(path, into_recording=True)
    assert not [m for m in reached if m.startswith(RECORDING)], \
        f"{path.relative_to(ROOT)} reaches {sorted(m for m in reached if m.startswith(RECORDING))}"


def test_no_import_loops():
    """Every module of mnistgen/ and stages/ imports only modules that do not import it back,
    at any depth (lazy imports inside functions count: they hide a loop, not remove it)."""
    modules = [p.relative_to(ROOT).as_posix() for p in sorted(ROOT.glob("mnistgen/**/*.py"))]
    graph = {m: imports_of(m) - {m} for m in modules}
    loops = []
    for module in modules:
        for other in graph[module]:
            if module in project_imports(ROOT / other, into_recording=True):
                loops.append(f"{module} <-> {other}")
    assert not loops, loops


def test_the_derivation_follows_imports_through_other_modules():
    """The check is only as good as the import walk: stages/train_gan.py never imports
    mnistgen/metrics.py itself, only through mnistgen/gan_monitor.py; and the walk reaches
    the recording layer only when asked."""
    tree = ast.parse((ROOT / "stages/train_gan.py").read_text())
    direct = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "mnistgen.metrics" not in direct and "mnistgen.gan_monitor" in direct
    assert "mnistgen/metrics.py" in project_imports(ROOT / "stages/train_gan.py")
    assert "mnistgen/tracking/runs.py" in project_imports(ROOT / "stages/train_gan.py", into_recording=True)
    assert not [m for m in project_imports(ROOT / "stages/train_gan.py") if m.startswith(RECORDING)]


@pytest.mark.slow
def test_a_recording_only_edit_reruns_nothing_but_sync_mlflow(pipeline_copy):
    """Append a comment to every module of the recording layer: `dvc status` lists only
    sync_mlflow (which DVC always runs), so no stage retrains for an edit to how runs are
    named or sent. The same edit to a domain module makes its stages stale."""
    before = dvc(pipeline_copy, "status", "--json").stdout
    assert set(yaml.safe_load(before)) == {"sync_mlflow"}, before
    for module in sorted((pipeline_copy / "mnistgen" / "tracking").glob("*.py")):
        module.write_text(module.read_text() + "\n# an edit that only changes what MLflow records\n")
    after = dvc(pipeline_copy, "status", "--json").stdout
    assert set(yaml.safe_load(after)) == {"sync_mlflow"}, after
    domain = pipeline_copy / "mnistgen" / "sampling.py"
    domain.write_text(domain.read_text() + "\n# an edit to code that draws the samples\n")
    stale = set(yaml.safe_load(dvc(pipeline_copy, "status", "--json").stdout))
    assert {"sample", "check_params"} <= stale and "train_gan" not in stale, stale

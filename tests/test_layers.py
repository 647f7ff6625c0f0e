"""The support module's imports follow the data flow (docs/design.md): no module imports a later step."""
import ast
from pathlib import Path

import nbutils

LAYERS = [  # in the order of docs/design.md's table
    {"io", "parallel", "config", "methods", "plots", "metrics", "baselines"},
    {"volumes", "data", "phantom", "tissuesim", "ixi"},
    {"train", "clustering", "nets", "crops", "gmvae"},
    {"losses", "appearance", "layout", "scanner_means", "drit"},
    {"harmonize", "apply", "explorer"},
    {"stats", "paired", "measures", "usage", "stage2", "supervised", "classifier",
     "outputs", "evaluations"},
    {"report", "pipeline", "bench", "seeds"},
]
PACKAGE = Path(nbutils.__file__).parent


def imports(path: Path) -> set[str]:
    """The nbutils modules ``path`` imports, anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_every_module_has_a_step_and_imports_only_its_own_or_earlier_steps():
    step = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(step), f"assign these to a step in docs/design.md and here: {modules ^ set(step)}"
    later = {m: sorted(d for d in imports(PACKAGE / f"{m}.py") if step[d] > step[m]) for m in modules}
    assert not {m: d for m, d in later.items() if d}, "imports against the data flow"


def test_the_report_reads_names_without_loading_a_model():
    import subprocess
    import sys

    code = "import sys, nbutils.report, nbutils.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

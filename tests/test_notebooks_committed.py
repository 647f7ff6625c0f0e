"""The notebooks as committed: valid for nbformat without its warnings (every cell has an id, which
nbformat will require), no outputs and no execution counts (executed copies go to the run folder)."""
import json
import warnings

import nbformat
import pytest

from nbutils import config

NOTEBOOKS = sorted(config.NOTEBOOKS.glob("*.ipynb"))


def test_the_eleven_notebooks_are_found():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 12)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_committed_notebook_is_valid_with_cell_ids_and_without_outputs(path):
    nb = json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MissingIDFieldWarning and the like fail the test
        nbformat.validate(nb)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)

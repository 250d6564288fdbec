"""The README's library example is executed, so it cannot rot."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
        det = namespace.get("det")
        if det is not None:
            assert det.valid.shape == (8, 5)
            assert np.all(np.isfinite(np.asarray(det.phi)[np.asarray(det.valid)]))

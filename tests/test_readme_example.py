"""The README's "use it on your own model" example runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_torchvision_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Use it on your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    macs, params = capsys.readouterr().out.split("\n")[0].split()
    assert int(macs) > 0 and int(params) > 0
    assert namespace["pruning"].sparsity(namespace["sparse"]) > 0.79
    assert namespace["lc"].count_macs(namespace["small"], namespace["shape"]) < int(macs)

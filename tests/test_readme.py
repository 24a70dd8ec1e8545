import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["image"].size == (128, 128)
    assert not namespace["network"].is_attached


def test_the_readme_anima_example_runs_as_written(tmp_path, monkeypatch):
    from lllite.anima import AnimaLLLiteNetwork

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (anima,) = [block for block in blocks if 'model_family="anima"' in block]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(anima, str(README), "exec"), namespace)
    assert isinstance(namespace["network"], AnimaLLLiteNetwork)
    assert namespace["images"][0].size == (128, 128)
    assert (tmp_path / "my_anima_lllite.safetensors").is_file()

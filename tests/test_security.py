"""Nothing from input data is ever executed or unpickled, and names cannot escape folders."""

import ast
from pathlib import Path

import pytest

from minewatch.scenes import group_files, safe_id

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("minewatch", "pipelines", "nsl_models")

# (module or object, attribute) pairs whose call would run or unpickle arbitrary data.
FORBIDDEN_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("os", "system"),
    ("os", "popen"),
}
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__"}


def _forbidden(tree, path):
    found = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        f = call.func
        if isinstance(f, ast.Name) and f.id in FORBIDDEN_NAMES:
            found.append(f"{path}:{call.lineno} {f.id}()")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if (f.value.id, f.attr) in FORBIDDEN_CALLS:
                found.append(f"{path}:{call.lineno} {f.value.id}.{f.attr}()")
        for kw in call.keywords:
            if kw.arg == "shell" and isinstance(kw.value, ast.Constant) and kw.value.value:
                found.append(f"{path}:{call.lineno} shell=True")
    return found


def test_the_scan_finds_what_it_looks_for():
    snippet = "import pickle, subprocess\neval(x)\npickle.loads(b)\nsubprocess.run(c, shell=True)\n"
    assert len(_forbidden(ast.parse(snippet), "snippet")) == 3


def test_no_eval_exec_unpickling_or_unsafe_yaml_in_our_code():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found += _forbidden(tree, path.relative_to(ROOT))
    assert not found


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "a/b\\c", "..", "", "scene; rm -rf /", "naïve scène 2024", ".hidden"],
)
def test_ids_used_in_file_names_cannot_escape_a_folder(name):
    safe = safe_id(name)
    assert safe and "/" not in safe and "\\" not in safe and safe not in (".", "..")
    assert not safe.startswith(".")


def test_hostile_file_names_become_safe_scene_ids():
    refs, _ = group_files(["/in/..scene;rm -rf ~.tif", "/in/cam$(reboot)/20240101T000000.png"])
    for ref in refs:
        assert set(ref.scene_id) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
        )
        assert not ref.scene_id.startswith(".")

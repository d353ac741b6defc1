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
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("joblib", "load"),
    ("torch", "load"),
    ("shelve", "open"),
    ("jsonpickle", "decode"),
}
# yaml loaders that build arbitrary Python objects; keyword arguments that unpickle.
FORBIDDEN_ATTRIBUTES = {"UnsafeLoader", "FullLoader", "Loader", "CLoader", "CUnsafeLoader"}
FORBIDDEN_KEYWORDS = {"allow_pickle"}
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
            truthy = isinstance(kw.value, ast.Constant) and kw.value.value
            if kw.arg == "shell" and truthy:
                found.append(f"{path}:{call.lineno} shell=True")
            if kw.arg in FORBIDDEN_KEYWORDS and truthy:
                found.append(f"{path}:{call.lineno} {kw.arg}=True")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "yaml"
            and node.attr in FORBIDDEN_ATTRIBUTES
        ):
            found.append(f"{path}:{node.lineno} yaml.{node.attr}")
    return found


def test_the_scan_finds_what_it_looks_for():
    snippet = "import pickle, subprocess\neval(x)\npickle.loads(b)\nsubprocess.run(c, shell=True)\n"
    assert len(_forbidden(ast.parse(snippet), "snippet")) == 3
    more = (
        "np.load(f, allow_pickle=True)\nyaml.load(s, Loader=yaml.UnsafeLoader)\npd.read_pickle(p)\n"
    )
    assert len(_forbidden(ast.parse(more), "snippet")) == 4  # yaml.load counted too


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

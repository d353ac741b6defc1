import subprocess
import sys


def test_nsl_imports_on_tf_221_with_keras_2():
    code = (
        "from minewatch.compat import import_nsl\n"
        "nsl = import_nsl()\n"
        "import tensorflow as tf\n"
        "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__\n"
        "model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])\n"
        "reg = nsl.keras.GraphRegularization(model, nsl.configs.make_graph_reg_config())\n"
        "print(nsl.__version__, type(reg).__name__)\n"
    )
    env = {"PATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["1.4.0", "GraphRegularization"]


def test_refuses_when_tensorflow_came_first_without_keras_2():
    code = (
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
        "import tensorflow\n"
        "from minewatch.compat import use_legacy_keras\n"
        "try:\n    use_legacy_keras()\nexcept RuntimeError as e:\n    print('refused')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=True,
    )
    assert out.stdout.strip() == "refused"

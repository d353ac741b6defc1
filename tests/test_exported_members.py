"""Each package lists its API in __all__, and every name there exists."""

import importlib

import pytest

MODULES = [
    "minewatch",
    "minewatch.compat",
    "minewatch.errors",
    "minewatch.geo",
    "minewatch.labels",
    "minewatch.rasters",
    "minewatch.scenes",
    "minewatch.spec",
    "minewatch.tables",
    "minewatch.tfrecord",
    "minewatch.bandstats",
    "minewatch.corruptions",
    "minewatch.dataclass_config",
    "minewatch.synth",
    "minewatch.synth.vessels",
    "minewatch.vessels",
    "minewatch.volumes",
    "pipelines",
    "pipelines.infer",
    "pipelines.infer.accounting",
    "pipelines.infer.job",
    "pipelines.infer.linking",
    "pipelines.infer.options",
    "pipelines.infer.quicklook",
    "pipelines.infer.reading",
    "pipelines.infer.scene_outputs",
    "pipelines.infer.serving",
    "pipelines.infer.sites",
    "pipelines.bigquery",
    "pipelines.options",
    "pipelines.tile",
    "pipelines.tile.job",
    "pipelines.tile.accounting",
    "pipelines.tile.cut",
    "pipelines.tile.discover",
    "pipelines.tile.plan",
    "pipelines.tile.write",
    "pipelines.tile.options",
    "minewatch.arguments",
    "minewatch.paths",
    "minewatch.workflows.demo",
    "minewatch.workflows.retrain",
    "pipelines.graph",
    "pipelines.combiners",
    "pipelines.graph.accounting",
    "pipelines.graph.descriptors",
    "pipelines.graph.edges",
    "pipelines.graph.job",
    "pipelines.graph.neighbours",
    "pipelines.graph.options",
    "pipelines.graph.pack",
    "pipelines.graph.packing",
    "pipelines.stream",
    "pipelines.stream.frames",
    "pipelines.stream.job",
    "pipelines.stream.labelling",
    "pipelines.stream.ledger",
    "pipelines.stream.metrics",
    "pipelines.stream.models",
    "pipelines.stream.options",
    "pipelines.stream.sources",
    "minewatch.embeddings",
    "minewatch.profiles",
    "nsl_models.configs",
    "nsl_models.data",
    "nsl_models.models",
    "nsl_models.train",
    "nsl_models.evaluate",
    "nsl_models.registry",
    "nsl_models.hardware",
    "nsl_models",
    "minewatch.volumes.result",
    "minewatch.volumes.grid",
    "minewatch.volumes.dsm",
    "minewatch.volumes.shadow",
    "minewatch.volumes.measure",
    "minewatch.synth.scenes",
    "minewatch.synth.layout",
    "minewatch.synth.render",
    "minewatch.synth.geojson",
    "nsl_models.data.spec",
    "nsl_models.data.records",
    "nsl_models.data.checks",
    "nsl_models.data.labels",
    "nsl_models.data.counts",
    "nsl_models.data.views",
    "nsl_models.data.dataset",
    "nsl_models.data.arrays",
    "minewatch.vessels.detect",
    "minewatch.vessels.ports",
    "minewatch.vessels.score",
    "minewatch.workflows.retrain.config",
    "minewatch.workflows.retrain.ledger",
    "minewatch.workflows.retrain.dataset",
    "minewatch.workflows.retrain.cycle",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__")
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing


def test_cli_help_answers_without_heavy_imports():
    import subprocess
    import sys

    code = (
        "import sys\nfrom minewatch.cli.main import cli\n"
        "assert 'tensorflow' not in sys.modules and 'apache_beam' not in sys.modules, "
        "[m for m in ('tensorflow', 'apache_beam') if m in sys.modules]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""Apache Beam jobs: tile, graph, infer.

Each job is a composite ``PTransform`` plus a ``run(argv=None,
save_main_session=True, test_pipeline=None)`` entry point.
"""

__all__: list[str] = []

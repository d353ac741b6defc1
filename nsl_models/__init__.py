"""Training: Keras models with NSL graph and adversarial regularization.

Import Neural Structured Learning through :func:`minewatch.compat.import_nsl`.
"""

__all__: list[str] = []

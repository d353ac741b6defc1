"""The graph term: where it compares (``graph.space``), how (``distance``, ``normalize``)."""

import numpy as np
import pytest

from minewatch.errors import ConfigError
from nsl_models import data as datalib
from nsl_models.configs import (
    DistanceType,
    GraphConfig,
    GraphSpace,
    ModelConfig,
    config_from_dict,
    make_graph_config,
)
from nsl_models.models import RegularizedModel, build_base_model, embedding_of

tf = pytest.importorskip("tensorflow")

SPEC = datalib.TileSpec(4, 4, 2, "uint16", ("a", "b"), ("x", "y", "z"), (10.0, 20.0), (2.0, 4.0))

#: Every combination the config accepts.
COMBINATIONS = [
    *[("embedding", d, n) for d in ("l2", "l1", "cosine") for n in (False, True)],
    *[
        ("predictions", d, False)
        for d in ("l2", "l1", "kl_divergence", "jensen_shannon_divergence")
    ],
]


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.uniform(1, 40, (4, 4, 4, 2)), tf.float32),
        "label": tf.constant([0, 1, -1, 2], tf.int32),
        "weight": tf.constant([1.0, 1.0, 0.0, 1.0], tf.float32),
        "nbr_image": tf.constant(rng.uniform(1, 40, (4, 2, 4, 4, 2)), tf.float32),
        "nbr_weight": tf.constant([[1.0, 0.5], [1.0, 0.0], [2.0, 1.0], [0.0, 0.0]]),
    }


def _model(**graph):
    tf.keras.utils.set_random_seed(0)
    base = build_base_model(SPEC, ModelConfig(width=4, depth=1, embedding_dim=8, dropout=0.0))
    model = RegularizedModel(base, make_graph_config(multiplier=0.5, **graph))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01))
    return model


def _losses(model, data):
    with tf.GradientTape() as tape:
        return model.compute_losses(data, tape)


def test_defaults_keep_squared_l2_between_raw_embeddings():
    config = GraphConfig()
    assert (config.space, config.distance, config.normalize) == (
        GraphSpace.EMBEDDING,
        DistanceType.L2,
        False,
    )


@pytest.mark.parametrize(("space", "distance", "normalize"), COMBINATIONS)
def test_each_combination_trains_a_step(space, distance, normalize):
    model = _model(space=space, distance=distance, normalize=normalize)
    data = _batch()
    logs = model.train_step(data)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert float(logs["graph_loss"]) > 0.0
    assert int(model.optimizer.iterations) == 1
    # No edge (all weights 0), or no neighbour features at all: the term is 0.
    no_edges = {**data, "nbr_weight": tf.zeros_like(data["nbr_weight"])}
    plain = {k: v for k, v in data.items() if not k.startswith("nbr_")}
    for batch in (no_edges, plain):
        model.reset_metrics()  # the logs are means over the steps since the last reset
        logs = model.train_step(batch)
        assert float(logs["graph_loss"]) == 0.0 and np.isfinite(float(logs["loss"]))


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(p, q):
    eps = 1e-7  # NSL's, inside the logs
    return (p * (np.log(p + eps) - np.log(q + eps))).sum(-1)


@pytest.mark.parametrize("distance", ["kl_divergence", "jensen_shannon_divergence"])
def test_predictions_compare_softmax_of_both_sides_by_hand(distance):
    model, data = _model(space="predictions", distance=distance), _batch()
    out = _losses(model, data)
    p = _softmax(model.base_model(data["image"]).numpy())[:, None, :]  # [B, 1, K]
    nbr = tf.reshape(data["nbr_image"], [-1, 4, 4, 2])
    q = _softmax(model.base_model(nbr).numpy()).reshape(4, 2, -1)  # [B, k, K]
    if distance == "kl_divergence":
        dist = _kl(np.broadcast_to(p, q.shape), q)  # KL(tile || neighbour)
    else:
        m = (p + q) / 2
        dist = _kl(np.broadcast_to(p, q.shape), m) / 2 + _kl(q, m) / 2
    w = data["nbr_weight"].numpy()
    expected = (w * dist).sum() / (w > 0).sum()
    np.testing.assert_allclose(out["graph_loss"].numpy(), expected, rtol=1e-4)
    assert 0 < expected < (np.log(2) if distance == "jensen_shannon_divergence" else np.inf)


@pytest.mark.parametrize("normalize", [True, False])
def test_normalised_embedding_distance_ignores_the_embedding_scale(normalize):
    model, data = _model(normalize=normalize), _batch()
    before = float(_losses(model, data)["graph_loss"])
    # ReLU(c z) = c ReLU(z): scaling the embedding layer scales every embedding by c.
    layer = model.base_model.get_layer("encoder").get_layer("embedding")
    layer.set_weights([w * 7.0 for w in layer.get_weights()])
    emb = embedding_of(model.base_model, data["image"]).numpy()
    assert np.abs(emb).max() > 0
    after = float(_losses(model, data)["graph_loss"])
    if normalize:
        np.testing.assert_allclose(after, before, rtol=1e-5)
    else:
        np.testing.assert_allclose(after, 49.0 * before, rtol=1e-4)  # squared L2


@pytest.mark.parametrize(
    "graph",
    [{}, {"normalize": True}, {"space": "predictions", "distance": "jensen_shannon_divergence"}],
)
def test_gradients_reach_the_neighbour_side(graph):
    model, data = _model(**graph), _batch()
    nbr = data["nbr_image"]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(nbr)
        out = model.compute_losses(data, tape)
    grad = tape.gradient(out["graph_loss"], nbr).numpy()
    assert np.abs(grad[0]).max() > 0  # an edge of weight 1
    assert np.abs(grad[3]).max() == 0  # no edge: no gradient


def test_xla_compiled_step_on_predictions():
    model = _model(space="predictions", distance="kl_divergence")
    logs = tf.function(model.train_step, jit_compile=True)(_batch())
    assert np.isfinite(float(logs["graph_loss"])) and float(logs["graph_loss"]) > 0


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (
            {"distance": "kl_divergence"},
            r"graph\.distance: kl_divergence compares probability distributions: "
            r"set graph\.space: predictions",
        ),
        (
            {"distance": "jensen_shannon_divergence", "space": "embedding"},
            r"graph\.distance: jensen_shannon_divergence compares probability distributions",
        ),
        (
            {"space": "predictions", "distance": "cosine"},
            r"graph\.distance: cosine is not offered between predicted distributions",
        ),
        (
            {"space": "predictions", "normalize": True},
            r"graph\.normalize: only for graph\.space: embedding",
        ),
        ({"space": "logits"}, r"graph\.space: 'logits' is not one of embedding, predictions"),
        ({"normalize": "yes"}, r"graph\.normalize: expected true or false"),
    ],
)
def test_config_rejects_combinations_that_do_not_fit(graph, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"graph": graph})


def test_make_graph_config_takes_the_new_keys():
    config = make_graph_config(space="predictions", distance="jensen_shannon_divergence")
    assert config.space is GraphSpace.PREDICTIONS
    assert config.distance is DistanceType.JENSEN_SHANNON
    with pytest.raises(ConfigError, match=r"normalize: only for graph\.space: embedding"):
        make_graph_config(space="predictions", normalize=True)

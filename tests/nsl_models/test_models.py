"""Models and the combined step: tiny models whose numbers can be checked by hand."""

import numpy as np
import pytest

from nsl_models import data as datalib
from nsl_models.configs import Architecture, ModelConfig, make_adversarial_config, make_graph_config
from nsl_models.models import (
    Normalization,
    RegularizedModel,
    _weighted_xent,
    build_base_model,
    embedding_of,
)

tf = pytest.importorskip("tensorflow")

SPEC = datalib.TileSpec(4, 4, 2, "uint16", ("a", "b"), ("x", "y", "z"), (10.0, 20.0), (2.0, 4.0))


def test_normalization_by_hand_and_invalid_pixels_to_zero():
    layer = Normalization([10.0, 20.0], [2.0, 4.0])
    x = np.array([[[[12.0, 28.0], [0.0, 0.0]]]], np.float32)  # 2nd pixel invalid
    np.testing.assert_allclose(layer(x).numpy(), [[[[1.0, 2.0], [0.0, 0.0]]]])


@pytest.mark.parametrize(
    ("arch", "channels"),
    [(Architecture.SMALL_CNN, 7), (Architecture.FRAME_CNN, 3), (Architecture.MOBILENET_V2, 5)],
)
def test_base_model_any_band_count(arch, channels):
    spec = datalib.TileSpec(
        16,
        16,
        channels,
        "uint16",
        tuple("abcdefg"[:channels]),
        ("p", "q"),
        (0.0,) * channels,
        (1.0,) * channels,
    )
    base = build_base_model(spec, ModelConfig(architecture=arch, width=8, embedding_dim=12))
    x = np.random.default_rng(0).uniform(0, 100, (2, 16, 16, channels)).astype(np.float32)
    assert base(x).shape == (2, 2)
    assert base.get_layer("logits").dtype == "float32"
    assert embedding_of(base, x).shape == (2, 12)


def _batch(k=2, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.uniform(1, 40, (batch, 4, 4, 2)), tf.float32),
        "label": tf.constant([0, 1, -1, 2][:batch], tf.int32),
        "weight": tf.constant([1.0, 1.0, 0.0, 1.0][:batch], tf.float32),
        "nbr_image": tf.constant(rng.uniform(1, 40, (batch, k, 4, 4, 2)), tf.float32),
        "nbr_weight": tf.constant([[1.0, 0.5], [1.0, 0.0], [2.0, 1.0], [0.0, 0.0]][:batch]),
    }


def _model(graph=True, adv=True, method="fgsm"):
    tf.keras.utils.set_random_seed(0)
    base = build_base_model(SPEC, ModelConfig(width=4, depth=1, embedding_dim=3, dropout=0.0))
    model = RegularizedModel(
        base,
        make_graph_config(enabled=graph, multiplier=0.5),
        make_adversarial_config(enabled=adv, multiplier=0.3, method=method, epsilon=0.1),
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01))
    return model


def test_graph_loss_matches_hand_computation():
    model, data = _model(adv=False), _batch()
    with tf.GradientTape() as tape:
        out = model.compute_losses(data, tape)
    emb = embedding_of(model.base_model, data["image"]).numpy()
    nbr = embedding_of(model.base_model, tf.reshape(data["nbr_image"], [-1, 4, 4, 2])).numpy()
    nbr = nbr.reshape(4, 2, -1)
    w = data["nbr_weight"].numpy()
    dist = ((emb[:, None, :] - nbr) ** 2).sum(-1)
    expected = (w * dist).sum() / (w > 0).sum()  # NSL: sum by non-zero weights
    np.testing.assert_allclose(out["graph_loss"].numpy(), expected, rtol=1e-5)
    # The unlabelled example (weight 0) does not enter the supervised loss.
    logits = model.base_model(data["image"]).numpy()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    sup = -(logp[0, 0] + logp[1, 1] + logp[3, 2]) / 3
    np.testing.assert_allclose(out["supervised_loss"].numpy(), sup, rtol=1e-5)
    total = sup + 0.5 * expected
    np.testing.assert_allclose(out["loss"].numpy(), total, rtol=1e-5)


def test_adversarial_neighbour_perturbs_only_labelled_pixels():
    model, data = _model(graph=False), _batch()
    captured = {}
    import nsl_models.models as mm

    real = mm.nsl.lib.gen_adv_neighbor

    def spy(xn, *args, **kwargs):
        adv, w = real(xn, *args, **kwargs)
        captured["delta"] = (adv - xn).numpy()
        return adv, w

    mm.nsl.lib.gen_adv_neighbor = spy
    try:
        with tf.GradientTape() as tape:
            out = model.compute_losses(data, tape)
    finally:
        mm.nsl.lib.gen_adv_neighbor = real
    delta = captured["delta"]
    assert np.allclose(delta[2], 0.0)  # unlabelled: no supervised gradient, no perturbation
    np.testing.assert_allclose(np.abs(delta[[0, 1, 3]]).max(), 0.1, rtol=1e-5)  # FGSM L-inf step
    assert out["adversarial_loss"].numpy() > out["supervised_loss"].numpy()


@pytest.mark.parametrize("method", [pytest.param("fgsm", marks=pytest.mark.slow), "pgd"])
def test_xla_compiled_combined_step_runs_on_cpu(method):
    model, data = _model(method=method), _batch()
    step = tf.function(model.train_step, jit_compile=True)
    logs = step(data)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert float(logs["graph_loss"]) > 0 and float(logs["adversarial_loss"]) > 0
    assert int(model.optimizer.iterations) == 1


def test_plain_records_turn_the_graph_term_off():
    model, data = _model(adv=False), _batch()
    plain = {k: v for k, v in data.items() if not k.startswith("nbr_")}
    logs = model.train_step(plain)
    assert float(logs["graph_loss"]) == 0.0


def _pixel_model(adv=True, method="fgsm"):
    tf.keras.utils.set_random_seed(0)
    config = ModelConfig(width=4, depth=1, embedding_dim=3, dropout=0.0, pixel_head=True)
    base = build_base_model(SPEC, config)
    model = RegularizedModel(
        base,
        make_graph_config(multiplier=0.5),
        make_adversarial_config(enabled=adv, multiplier=0.3, method=method, epsilon=0.1),
        pixel_loss_weight=2.0,
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01))
    return model


def _pixel_batch():
    data = _batch()
    labels = np.zeros((4, 4, 4), np.int32)
    labels[0, :2] = 1
    labels[1] = 2
    labels[1, 0, 0] = -1  # ignored pixel
    labels[2] = -1  # unlabelled tile: nothing
    weights = np.where(labels >= 0, 1.0, 0.0).astype(np.float32)
    weights[labels == 2] = 3.0  # a rare class weighs more
    return {**data, "pixel_label": tf.constant(labels), "pixel_weight": tf.constant(weights)}


def test_pixel_head_shapes_and_pixel_loss_by_hand():
    model, data = _pixel_model(adv=False), _pixel_batch()
    logits, pixel = model.base_model(data["image"])
    assert logits.shape == (4, 3) and pixel.shape == (4, 4, 4, 3) and pixel.dtype == tf.float32
    with tf.GradientTape() as tape:
        out = model.compute_losses(data, tape)
    p = pixel.numpy()
    logp = p - np.log(np.exp(p).sum(-1, keepdims=True))
    y, w = data["pixel_label"].numpy(), data["pixel_weight"].numpy()
    total = sum(
        w[i, r, c] * -logp[i, r, c, y[i, r, c]]
        for i in range(4)
        for r in range(4)
        for c in range(4)
        if y[i, r, c] >= 0
    )
    expected = total / (w > 0).sum()  # 16 + 15 + 0 + 16 pixels count
    assert (w > 0).sum() == 47
    np.testing.assert_allclose(out["pixel_loss"].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        out["loss"].numpy(),
        out["supervised_loss"].numpy() + 0.5 * out["graph_loss"].numpy() + 2.0 * expected,
        rtol=1e-5,
    )


def test_xla_compiled_step_with_pixel_head_and_pgd():
    model, data = _pixel_model(method="pgd"), _pixel_batch()
    step = tf.function(model.train_step, jit_compile=True)
    logs = step(data)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert float(logs["pixel_loss"]) > 0 and float(logs["adversarial_loss"]) > 0
    assert int(model.optimizer.iterations) == 1


def test_pixel_head_without_pixel_labels_trains_the_tile_head_only():
    model, data = _pixel_model(adv=False), _batch()
    logs = model.train_step(data)
    assert float(logs["pixel_loss"]) == 0.0 and np.isfinite(float(logs["loss"]))


def test_corrupted_view_is_where_the_adversarial_branch_starts():
    """With ``aug_image`` the perturbation starts from it and scores the tile head only."""
    model, data = _pixel_model(), _pixel_batch()
    with tf.GradientTape() as tape:
        plain = model.compute_losses(data, tape)
    # The same image as its own "corrupted view": FGSM from the same point, but
    # only the tile head is attacked and scored, so the pixel term drops out.
    with tf.GradientTape() as tape:
        same = model.compute_losses({**data, "aug_image": data["image"]}, tape)
    xn = model._normalize(data["image"])
    with tf.GradientTape() as t:
        t.watch(xn)
        loss = _weighted_xent(
            data["label"], model._logits(model._embed(xn, True), True), data["weight"]
        )
    adv = xn + 0.1 * tf.sign(t.gradient(loss, xn))
    expected = _weighted_xent(
        data["label"], model._logits(model._embed(adv, True), True), data["weight"]
    )
    np.testing.assert_allclose(same["adversarial_loss"].numpy(), expected.numpy(), rtol=1e-5)
    assert float(plain["adversarial_loss"]) > float(same["adversarial_loss"])  # + pixel term
    # A different view moves the branch; the clean terms do not change.
    shifted = {**data, "aug_image": tf.roll(data["image"], 1, axis=2)}
    with tf.GradientTape() as tape:
        moved = model.compute_losses(shifted, tape)
    assert abs(float(moved["adversarial_loss"]) - float(same["adversarial_loss"])) > 1e-4
    np.testing.assert_allclose(moved["pixel_loss"].numpy(), plain["pixel_loss"].numpy())

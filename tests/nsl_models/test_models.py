"""Models and the combined step: tiny models whose numbers can be checked by hand."""

import numpy as np
import pytest

from minewatch.errors import ConfigError
from nsl_models import data as datalib
from nsl_models.configs import (
    Architecture,
    ModelConfig,
    PixelDecoder,
    make_adversarial_config,
    make_graph_config,
)
from nsl_models.models import (
    Normalization,
    RegularizedModel,
    _weighted_xent,
    build_base_model,
    embedding_of,
    pixel_xent,
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


def _unet_spec(side, channels=5):
    bands = tuple("abcde"[:channels])
    return datalib.TileSpec(
        side, side, channels, "uint16", bands, ("bg", "pile", "road"), (10.0,) * channels,
        (2.0,) * channels,
    )  # fmt: skip


def _unet_config(**kwargs):
    fields = {"width": 4, "depth": 2, "embedding_dim": 6, "dropout": 0.0, "pixel_width": 4}
    return ModelConfig(
        **{"pixel_head": True, "pixel_decoder": PixelDecoder.UNET, **fields, **kwargs}
    )


@pytest.mark.parametrize("side", [16, 32])
def test_unet_decoder_shapes_dtype_and_one_pass_equals_the_base_model(side):
    tf.keras.utils.set_random_seed(0)
    base = build_base_model(_unet_spec(side), _unet_config())
    x = np.random.default_rng(0).uniform(0, 30, (2, side, side, 5)).astype(np.float32)
    logits, pixel = base(x)
    assert logits.shape == (2, 3) and logits.dtype == tf.float32
    assert pixel.shape == (2, side, side, 3) and pixel.dtype == tf.float32
    maps = base.get_layer("encoder").get_layer("encoder_features")(x)
    assert [tuple(m.shape[1:3]) for m in maps] == [(side, side), (side // 2,) * 2, (side // 4,) * 2]
    # The train step's single encoder pass computes what the base model's graph does.
    emb, one_pass = RegularizedModel(base).forward(base.get_layer("normalize")(x))
    np.testing.assert_allclose(one_pass.numpy(), pixel.numpy(), atol=1e-6)
    np.testing.assert_allclose(emb.numpy(), embedding_of(base, x).numpy(), atol=1e-6)


def test_unet_pixel_loss_reaches_every_encoder_layer_through_the_skips():
    tf.keras.utils.set_random_seed(0)
    base = build_base_model(_unet_spec(16), _unet_config())
    model = RegularizedModel(base)
    features = base.get_layer("encoder").get_layer("encoder_features")
    x = np.random.default_rng(1).uniform(0, 30, (2, 16, 16, 5)).astype(np.float32)
    labels = tf.constant(np.random.default_rng(2).integers(0, 3, (2, 16, 16)), tf.int32)
    xn = base.get_layer("normalize")(x)
    with tf.GradientTape(persistent=True) as tape:
        maps = features(xn)
        tape.watch(maps)
        emb = tf.cast(base.get_layer("encoder").get_layer("encoder_top")(maps[-1]), tf.float32)
        pixel = base.get_layer("pixel_decoder").get_layer("pixel_unet")([xn, *maps, emb])
        loss = pixel_xent(labels, pixel, tf.ones([2, 16, 16]))
    # Each resolution's map feeds the decoder directly (a skip), not only via the bottom.
    for i, g in enumerate(tape.gradient(loss, maps)):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, f"map{i} unused"
    # ... and the pixel loss alone trains every convolution of the encoder.
    grads = tape.gradient(loss, features.trainable_variables)
    assert grads and all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    assert len(model.trainable_variables) == len(base.trainable_variables)  # shared, not copied


def test_xla_compiled_step_with_unet_decoder_graph_and_pgd():
    tf.keras.utils.set_random_seed(0)
    base = build_base_model(SPEC, _unet_config(depth=1, embedding_dim=3))
    model = RegularizedModel(
        base,
        make_graph_config(multiplier=0.5),
        make_adversarial_config(enabled=True, multiplier=0.3, method="pgd", epsilon=0.1),
        pixel_loss_weight=2.0,
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01))
    data = _pixel_batch()
    before = [v.numpy() for v in base.get_layer("pixel_decoder").trainable_variables]
    logs = tf.function(model.train_step, jit_compile=True)(data)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert float(logs["pixel_loss"]) > 0 and float(logs["adversarial_loss"]) > 0
    after = base.get_layer("pixel_decoder").trainable_variables
    assert all(not np.allclose(a, b.numpy()) for a, b in zip(before, after, strict=True))
    assert float(model.test_step(data)["pixel_loss"]) > 0


@pytest.mark.parametrize("decoder", [PixelDecoder.FLAT, PixelDecoder.UNET])
def test_export_serves_the_same_signature_with_either_decoder(decoder, tmp_path):
    from nsl_models.registry import export_model

    spec = _unet_spec(16)
    tf.keras.utils.set_random_seed(0)
    base = build_base_model(spec, _unet_config(pixel_decoder=decoder))
    meta = export_model(
        base, spec, str(tmp_path), task="tile", config={}, metrics={}, data_hash="sha256:0"
    )
    assert meta["outputs"] == ["probabilities", "embedding", "pixel_probabilities"]
    serve = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    outputs = {k: (v.shape.as_list(), v.dtype) for k, v in serve.structured_outputs.items()}
    assert outputs == {
        "probabilities": ([None, 3], tf.float32),
        "embedding": ([None, 6], tf.float32),
        "pixel_probabilities": ([None, 16, 16, 3], tf.float32),
    }
    x = np.random.default_rng(0).uniform(0, 30, (3, 16, 16, 5)).astype(np.float32)
    _, pixel = base(x)
    served = serve(image=tf.constant(x))["pixel_probabilities"].numpy()
    np.testing.assert_allclose(served, tf.nn.softmax(pixel).numpy(), atol=1e-6)


def test_unet_decoder_refuses_what_it_cannot_build():
    with pytest.raises(ConfigError, match=r"pixel_decoder: unet needs architecture small_cnn"):
        ModelConfig(architecture=Architecture.FRAME_CNN, pixel_decoder=PixelDecoder.UNET)
    with pytest.raises(ConfigError, match=r"a 12 x 12 tile cannot be halved 3 times"):
        build_base_model(_unet_spec(12), _unet_config(depth=3))


def test_pixel_focal_term_by_hand_and_zero_is_plain_cross_entropy():
    """One pixel per class of confidence: the focal factor is (1 - p_true) ** gamma."""
    from nsl_models.models import pixel_xent

    p = np.array([0.9, 0.5, 0.2], np.float32)  # probability of the true class (class 0)
    logits = np.log(np.stack([p, 1.0 - p], axis=-1)).reshape(1, 1, 3, 2)
    labels = np.zeros((1, 1, 3), np.int32)
    weights = np.array([[[1.0, 2.0, 0.0]]], np.float32)  # the third pixel is ignored
    xent = -np.log(p)
    plain = float(pixel_xent(labels, logits, weights))
    assert plain == pytest.approx((xent[0] + 2 * xent[1]) / 2, rel=1e-5)
    assert float(pixel_xent(labels, logits, weights, 0.0)) == pytest.approx(plain)
    focal = float(pixel_xent(labels, logits, weights, 2.0))
    expected = (0.1**2 * xent[0] + 2 * 0.5**2 * xent[1]) / 2
    assert focal == pytest.approx(expected, rel=1e-4)

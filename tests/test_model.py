import urllib.error

import pytest
import torch
import torchvision

from siamese.errors import UserError
from siamese.export import deployed_module
from siamese.model import AllPairs, CosineClassifier, SiameseNetwork, WeightAverage, build_model
from siamese.training import balanced_weights


@pytest.mark.parametrize("backbone, features, dim", [
    ("resnet18", "pooled", 512), ("resnet18", "logits", 1000),
    ("mobilenet_v3_small", "pooled", 1024), ("squeezenet1_0", None, None),
    ("efficientnet_b0", "pooled", 1280),
])
def test_shapes_for_backbones_and_feature_modes(backbone, features, dim):
    if features is None:  # no linear classifier to take features from
        with pytest.raises(UserError, match="no linear classifier"):
            SiameseNetwork(backbone)
        return
    torch.manual_seed(0)
    model = SiameseNetwork(backbone, features=features, image_size=32).eval()
    assert model.config["feature_dim"] == dim
    x1, x2 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert model.embed(x1).shape == (3, dim)
        logits = model(x1, x2)
        assert logits.shape == (3,)
        similarity = deployed_module(model, "pair")(x1, x2)  # what gets deployed
    assert similarity.shape == (3, 1)
    torch.testing.assert_close(similarity.squeeze(1), torch.sigmoid(logits))


def test_head_is_the_original_layer_order():
    model = SiameseNetwork("resnet18", image_size=32)
    kinds = [type(m).__name__ for m in model.cls_head]
    assert kinds == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "Sigmoid",
                     "Dropout", "Linear"]
    assert isinstance(model.backbone.fc, torch.nn.Identity)
    assert isinstance(SiameseNetwork("resnet18", features="logits").backbone.fc, torch.nn.Linear)


def test_config_rebuilds_the_same_architecture():
    model = SiameseNetwork("mobilenet_v3_small", features="logits", image_size=48)
    rebuilt = build_model(model.config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameter names and shapes


def test_unknown_backbone_suggests_names():
    with pytest.raises(UserError, match="did you mean resnet18"):
        SiameseNetwork("resnt18")


def test_weights_file_for_another_backbone_is_refused(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(UserError, match="does not fit backbone resnet18"):
        SiameseNetwork("resnet18", weights=str(path))
    with pytest.raises(UserError, match="does not exist"):
        SiameseNetwork("resnet18", weights=str(tmp_path / "missing.pth"))


def test_local_weights_file_is_loaded(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = SiameseNetwork("resnet18", weights=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)


def test_offline_download_fails_clearly(monkeypatch):
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(UserError) as error:
        SiameseNetwork("resnet18", weights="imagenet")
    assert "--weights none" in str(error.value) and "--weights PATH" in str(error.value)


def test_all_pairs_scores_every_pair_like_the_pair_forward():
    torch.manual_seed(0)
    model = SiameseNetwork("resnet18", image_size=32).eval()
    images, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 0, 1, 2, 1])
    with torch.no_grad():
        logits, same, class_logits = AllPairs(model)(images, labels)
        assert logits.shape == same.shape == (10,)  # 5 * 4 / 2 pairs
        assert class_logits is None  # no classifier without --class-loss
        pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
        expected = model(images[[i for i, _ in pairs]], images[[j for _, j in pairs]])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert same.tolist() == [bool(labels[i] == labels[j]) for i, j in pairs]


def test_all_pairs_classifier_scores_each_image_from_its_features():
    torch.manual_seed(0)
    model = SiameseNetwork("resnet18", image_size=32).eval()
    all_pairs = AllPairs(model, classes=7).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 6, 6])
    with torch.no_grad():
        _, _, class_logits = all_pairs(images, labels)
        expected = all_pairs.classifier(model.embed(images))
    assert class_logits.shape == (4, 7)
    torch.testing.assert_close(class_logits, expected)
    # a training aid only: the deployed network has no classifier weights
    assert not any(name.startswith("classifier") for name in model.state_dict())


def test_cosine_classifier_scores_directions_with_a_margin_on_the_own_class():
    torch.manual_seed(0)
    classifier = CosineClassifier(8, 3, scale=16.0, margin=0.25)
    features, labels = torch.randn(5, 8), torch.tensor([0, 2, 1, 1, 0])
    plain = classifier(features)
    expected = 16.0 * torch.nn.functional.normalize(features, dim=1) @ torch.nn.functional.normalize(
        classifier.weight, dim=1).T
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(classifier(features * 7.0), plain)  # the features' length does not count
    assert plain.abs().max() <= 16.0 + 1e-5
    # while training, the own class's logit is lowered by scale x margin, and only that one
    difference = plain - classifier(features, labels)
    torch.testing.assert_close(difference, 4.0 * torch.nn.functional.one_hot(labels, 3).float())


def test_all_pairs_with_class_scale_carries_a_cosine_classifier():
    model = SiameseNetwork("resnet18", image_size=32)
    assert isinstance(AllPairs(model, classes=7, class_scale=16.0).classifier, CosineClassifier)
    assert isinstance(AllPairs(model, classes=7).classifier, torch.nn.Linear)


def test_balanced_weights_give_each_kind_of_pair_half_the_loss():
    same = torch.tensor([True, False, False, False, False, True, False, False])
    weights = balanced_weights(same)
    assert weights[same].sum().item() == pytest.approx(weights[~same].sum().item())
    assert weights.mean().item() == pytest.approx(1.0)


def test_weight_average_moves_a_fraction_towards_the_trained_weights():
    torch.manual_seed(0)
    model = SiameseNetwork("resnet18", image_size=32)
    average = WeightAverage(model, decay=0.75, steps=100)  # past the warm-up
    before = {name: value.clone() for name, value in average.model.state_dict().items()}
    model.train()(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))  # moves BatchNorm statistics
    with torch.no_grad():
        model.cls_head[1].weight.add_(1.0)
    average.update()
    after, current = average.model.state_dict(), model.state_dict()
    for name in ("cls_head.1.weight", "cls_head.2.running_mean", "backbone.bn1.running_var"):
        torch.testing.assert_close(after[name], 0.75 * before[name] + 0.25 * current[name], msg=name)
    assert after["backbone.bn1.num_batches_tracked"] == current["backbone.bn1.num_batches_tracked"] == 1
    assert not any(p.requires_grad for p in average.model.parameters())
    assert average.steps == 101


def test_weight_average_follows_closely_at_first():
    model = SiameseNetwork("resnet18", image_size=32)
    average = WeightAverage(model, decay=0.999)
    before = average.model.cls_head[1].weight.clone()
    with torch.no_grad():
        model.cls_head[1].weight.add_(1.0)
    average.update()  # first step: decay (1 + 1) / (10 + 1), not 0.999
    torch.testing.assert_close(average.model.cls_head[1].weight, before + 9 / 11)


def test_normalized_features_make_the_score_blind_to_feature_length():
    from siamese.checkpoint import make_checkpoint
    from siamese.model import SiameseNetwork, build_model

    torch.manual_seed(0)
    network = SiameseNetwork("resnet18", image_size=32, normalize=True).eval()
    f1, f2 = torch.randn(4, 512), torch.randn(4, 512)
    torch.testing.assert_close(network.score_features(3.0 * f1, 0.5 * f2), network.score_features(f1, f2))
    plain = SiameseNetwork("resnet18", image_size=32).eval()
    assert not torch.allclose(plain.score_features(3.0 * f1, f2), plain.score_features(f1, f2))
    rebuilt = build_model(make_checkpoint(model=network, epoch=1)["config"])  # the setting travels with the model
    assert rebuilt.config["normalize"] is True


def _with_scoring(plain, **settings):
    """The same network with other scoring settings (flip_average, shift_average)."""
    model = build_model(dict(plain.config, **settings)).eval()
    model.load_state_dict(plain.state_dict())
    return model


def test_flip_average_scores_the_mean_of_the_pair_and_its_mirror():
    torch.manual_seed(0)
    plain = SiameseNetwork("resnet18", image_size=32, normalize=True).eval()
    flipped = _with_scoring(plain, flip_average=True)
    x1, x2 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (torch.sigmoid(plain(x1, x2)) + torch.sigmoid(plain(x1.flip(3), x2.flip(3)))) / 2
        got = torch.sigmoid(flipped.pair_logits(x1, x2))
        features = flipped.scoring_features(x1)
        assert features.shape == (3, 2 * plain.config["feature_dim"]) == (3, flipped.scoring_dim)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        d = plain.config["feature_dim"]
        torch.testing.assert_close(features[:, :d], plain.embed(x1))
        torch.testing.assert_close(features[:, d:], plain.embed(x1.flip(3)))  # the mirrored image's features
        assert not torch.allclose(features[:, :d], features[:, d:], atol=1e-3)
        torch.testing.assert_close(flipped(x1, x2), plain(x1, x2))  # training's forward is unchanged


def test_shift_average_embeds_the_mean_of_the_image_and_its_four_one_pixel_shifts():
    torch.manual_seed(0)
    plain = SiameseNetwork("resnet18", image_size=32, normalize=True).eval()
    shifted = _with_scoring(plain, shift_average=True)
    x1, x2 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    # the image moved one pixel down, up, right and left, its far edge wrapped round
    copies = [x1, torch.cat([x1[:, :, -1:], x1[:, :, :-1]], 2), torch.cat([x1[:, :, 1:], x1[:, :, :1]], 2),
              torch.cat([x1[..., -1:], x1[..., :-1]], 3), torch.cat([x1[..., 1:], x1[..., :1]], 3)]
    with torch.no_grad():
        expected = torch.stack([plain.embed(copy) for copy in copies]).mean(0)
        features = shifted.scoring_features(x1)
        assert features.shape == (3, shifted.scoring_dim) == (3, plain.config["feature_dim"])
        torch.testing.assert_close(features, expected)
        assert not torch.allclose(features, plain.embed(x1), atol=1e-3)  # the copies differ
        torch.testing.assert_close(shifted(x1, x2), plain(x1, x2))  # training's forward is unchanged
        both = _with_scoring(plain, shift_average=True, flip_average=True)
        d = plain.config["feature_dim"]  # with both, the mirrored image's features are shift-averaged too
        torch.testing.assert_close(both.scoring_features(x1)[:, d:], shifted.scoring_features(x1.flip(3)))

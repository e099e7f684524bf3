import pytest
import torch


@pytest.fixture
def one_thread():
    """Controller tests time nothing but train tiny policies: one torch thread keeps them
    from fighting the other tests for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """Makes a proxy task on a small synthetic set at 128 px, with ResNet-18 (random) features
    cached: ``tiny_task(seed)``; 12 images, a quarter of them for validation."""
    from nasfpn.backbones import build_backbone
    from nasfpn.cache import FeatureCache
    from nasfpn.data import DetectionDataset, split_ids, synthetic_dataset
    from nasfpn.train import ProxyTask

    def make(seed: int, num_images: int = 12) -> ProxyTask:
        root = tmp_path_factory.mktemp("data")
        ann, images = synthetic_dataset(root, num_images=num_images, image_size=128, seed=seed)
        everything = DetectionDataset(ann, images, 128)
        train_ids, val_ids = split_ids(everything.image_ids, 0.25, 0)
        train = DetectionDataset(everything.coco, images, 128, image_ids=train_ids)
        val = DetectionDataset(everything.coco, images, 128, image_ids=val_ids)
        backbone = build_backbone("resnet18", probe_size=128)
        return ProxyTask(train, val, backbone,
                         train_cache=FeatureCache.build(backbone, train, root, flips=(False, True)),
                         val_cache=FeatureCache.build(backbone, val, root, flips=(False,)))

    return make

"""The PyTorch twins of nabla's nine example nets: torchvision's own classes for the five
standard nets (10 classes), and for the four book nets the `nn.Sequential` of the same
layers. Shared by `torch_keys.py`, `torch_agree.py` and the benchmarks."""
import torch.nn as nn
import torchvision.models as tvm

NETS = [
    "mnist_linear",
    "mnist_mlp",
    "mnist_cnn",
    "cifar_bn",
    "resnet34",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_tiny",
]

# Input shape (C, H, W) each example declares.
INPUT = {
    "mnist_linear": (1, 28, 28),
    "mnist_mlp": (1, 28, 28),
    "mnist_cnn": (1, 28, 28),
    "cifar_bn": (3, 32, 32),
    "resnet34": (3, 224, 224),
    "mobilenet_v2": (3, 224, 224),
    "efficientnet_b0": (3, 224, 224),
    "convnext_tiny": (3, 224, 224),
    "vit_tiny": (3, 224, 224),
}


def conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def build(name, stochastic_depth=0.0, image_size=224):
    """The PyTorch model for example `name`. `stochastic_depth` is EfficientNet's and
    ConvNeXt's drop-path rate, which nabla's nets do not have (0 makes them the same);
    `image_size` is ViT's (its position embedding has one entry per patch)."""
    if name == "mnist_linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if name == "mnist_mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
        )
    if name == "mnist_cnn":
        return nn.Sequential(
            *conv_bn_relu(1, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10),
        )
    if name == "cifar_bn":
        return nn.Sequential(
            *conv_bn_relu(3, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
        )
    if name == "resnet34":
        return tvm.resnet34(num_classes=10)
    if name == "mobilenet_v2":
        return tvm.mobilenet_v2(num_classes=10)
    if name == "efficientnet_b0":
        return tvm.efficientnet_b0(num_classes=10, stochastic_depth_prob=stochastic_depth)
    if name == "convnext_tiny":
        return tvm.convnext_tiny(num_classes=10, stochastic_depth_prob=stochastic_depth)
    if name == "vit_tiny":
        return tvm.VisionTransformer(
            image_size=image_size, patch_size=16, num_layers=12, num_heads=3,
            hidden_dim=192, mlp_dim=768, num_classes=10,
        )
    raise ValueError(f"unknown net {name}")

"""Build the torchvision Faster R-CNN and load local weight files into it.

Nothing is downloaded: every torchvision builder is called with ``weights=None`` and
``weights_backbone=None``. With user weights (a detector or a backbone state dict) the backbone
uses ``FrozenBatchNorm2d`` and only ``trainable_layers`` stages train, as torchvision does for
pretrained models; from scratch every layer trains with ordinary BatchNorm. The v2 model keeps
ordinary BatchNorm in both cases, as torchvision's v2 builder does (hence sync BN under DDP).

Input normalisation: grayscale cache images are repeated to 3 channels (see
``transforms.to_model_input``) and normalised by the model with ``cfg.image_mean``/``image_std``
(ImageNet by default), the statistics ImageNet/COCO backbones were trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, RPNHead, TwoMLPHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cxrdet.classes import NUM_DETECTOR_LABELS
from cxrdet.detector.config import DetectorConfig
from cxrdet.errors import UserError

# A file must fill at least this share of the model's tensors, or it is the wrong file.
MIN_MATCHED_SHARE = 0.5
LIGHT_FPN_CHANNELS = 64  # light model: FPN width
LIGHT_REPRESENTATION = 256  # light model: box head width


def build_detector(cfg: DetectorConfig) -> FasterRCNN:
    """The Faster R-CNN of ``cfg.model`` with 15 outputs, randomly initialised (no weights loaded)."""
    frozen = cfg.pretrained and cfg.model != "fasterrcnn_resnet50_fpn_v2"
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    trainable = cfg.trainable_layers if cfg.pretrained else 5
    anchors = AnchorGenerator(
        sizes=tuple((int(s),) for s in cfg.anchor_sizes),
        aspect_ratios=(tuple(float(a) for a in cfg.aspect_ratios),) * len(cfg.anchor_sizes),
    )
    kwargs = dict(
        num_classes=NUM_DETECTOR_LABELS,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_anchor_generator=anchors,
        box_detections_per_img=cfg.detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_score_thresh=cfg.score_thresh,
        box_nms_thresh=cfg.nms_thresh,
    )
    if cfg.model == "fasterrcnn_resnet50_fpn":
        backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=norm_layer), trainable)
        return FasterRCNN(backbone, **kwargs)
    if cfg.model == "fasterrcnn_resnet18_fpn":
        return _light_detector(norm_layer, trainable, kwargs)
    if cfg.model == "fasterrcnn_mobilenet_v3_large_fpn":
        return _mobilenet_detector(cfg, norm_layer, kwargs)
    if cfg.model == "fasterrcnn_resnet50_fpn_v2":
        # Same construction as torchvision's fasterrcnn_resnet50_fpn_v2, minus the download.
        backbone = _resnet_fpn_extractor(resnet50(weights=None), trainable, norm_layer=nn.BatchNorm2d)
        rpn_head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
        box_head = FastRCNNConvFCHead(
            (backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d
        )
        return FasterRCNN(backbone, rpn_head=rpn_head, box_head=box_head, **kwargs)
    raise UserError(f"unknown model {cfg.model!r}")


def _light_detector(norm_layer, trainable: int, kwargs: dict) -> FasterRCNN:
    """Light CPU option for demos and tests: ResNet-18 body, 64-channel FPN, 256-wide box head.

    The same Faster R-CNN, about 10x cheaper per step than R50-FPN at small sizes (the default
    box head's 12544x1024 layer dominates there). ImageNet ResNet-18 weights load into its body.
    """
    body = resnet18(weights=None, norm_layer=norm_layer)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1", "bn1"][: trainable + (trainable == 5)]
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    returned = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    backbone = BackboneWithFPN(body, returned, [64, 128, 256, 512], LIGHT_FPN_CHANNELS, LastLevelMaxPool())
    box_head = TwoMLPHead(LIGHT_FPN_CHANNELS * 7 * 7, LIGHT_REPRESENTATION)
    predictor = FastRCNNPredictor(LIGHT_REPRESENTATION, kwargs.pop("num_classes"))
    return FasterRCNN(backbone, num_classes=None, box_head=box_head, box_predictor=predictor, **kwargs)


def _mobilenet_detector(cfg: DetectorConfig, norm_layer, kwargs: dict) -> FasterRCNN:
    """torchvision's fasterrcnn_mobilenet_v3_large_fpn, minus the download.

    Its FPN has 3 levels (the last two stages + max pool), each with every anchor size, and its
    RPN drops proposals scoring under 0.05, as torchvision's builder sets. From scratch all 6
    stages train.
    """
    trainable = cfg.trainable_layers if cfg.pretrained else 6
    backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=norm_layer), True, trainable)
    ratios = tuple(float(a) for a in cfg.aspect_ratios)
    kwargs["rpn_anchor_generator"] = AnchorGenerator(sizes=(tuple(int(s) for s in cfg.anchor_sizes),) * 3,
                                                     aspect_ratios=(ratios,) * 3)
    return FasterRCNN(backbone, rpn_score_thresh=0.05, **kwargs)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, loaded with ``weights_only=True`` (no code runs from the file).

    Accepts a plain state dict, a Lightning checkpoint (``state_dict``) or a ``{"model": ...}``
    dict; strips the ``model.`` (our LightningModule) and ``module.`` (DDP) prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; put it in models-weight/ and pass its path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or one that needs unpickling arbitrary objects
        raise UserError(
            f"cannot load weights file {path} with weights_only=True ({type(e).__name__}: {e}); "
            "expected a torch state dict (tensors only), e.g. saved with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state dict of tensors")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
                   model_name: str) -> list[str]:
    """Load the tensors whose name and shape match; return the names replaced (shape differs)."""
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    replaced = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]
    share = sum(k in matched for k in wanted) / max(1, len(wanted))
    if share < MIN_MATCHED_SHARE:
        example = next(iter(state), "<empty>")
        raise UserError(
            f"weights file {path} does not fit the {what}: only {share:.0%} of its tensors match by "
            f"name and shape (file keys look like {example!r}). Expected a torchvision "
            f"{what} state dict: the architecture must match the file (config model {model_name!r}), a "
            "full-detector file goes in the weights field and an ImageNet ResNet file in backbone_weights"
        )
    module.load_state_dict(matched, strict=False)
    return replaced


def load_pretrained(model: FasterRCNN, cfg: DetectorConfig, log=print) -> None:
    """Load ``cfg.weights`` (detector) and/or ``cfg.backbone_weights`` (ResNet) into ``model``."""
    if cfg.backbone_weights:
        path = Path(cfg.backbone_weights)
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(("fc.", "classifier."))}
        # torchvision ResNet keys (conv1.weight, layer1.0...) live under backbone.body; MobileNet's
        # (features.0.0.weight...) there without their "features." prefix.
        state = {k.removeprefix("features."): v for k, v in state.items()}
        what = "MobileNetV3-Large" if "mobilenet" in cfg.model else "ResNet"
        replaced = _load_matching(model.backbone.body, state, path, f"{cfg.model} backbone ({what})", cfg.model)
        log(f"loaded backbone weights from {path}" + (f"; replaced (shape differs): {replaced}" if replaced else ""))
    if cfg.weights:
        path = Path(cfg.weights)
        state = read_state_dict(path)
        replaced = _load_matching(model, state, path, f"{cfg.model} detector", cfg.model)
        msg = f"loaded detector weights from {path}"
        if replaced:
            msg += f"; class head replaced for {NUM_DETECTOR_LABELS} labels (shape differs): {replaced}"
        log(msg)


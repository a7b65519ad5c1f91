"""Batched augmentation on the training device: one kernel chain per batch, own draw per image.

The per-image v2 path (:mod:`dataloupe.data._augment`) costs a few milliseconds of CPU per
image; at GPU rates (thousands of images/s) the CPU cannot keep up. This path draws every
image's parameters as tensors and applies them to the whole ``(B, 3, S, S)`` batch at once:

* RandomResizedCrop + horizontal flip + rotation: one per-image affine sampling grid,
  one ``grid_sample`` (bilinear; the crop window rotates about its centre and samples
  outside the image are black, like RandomRotation's corners);
* ColorJitter: per-image brightness, contrast, saturation factors and a hue rotation in
  YIQ space (fixed order b, c, s, h rather than torchvision's random order);
* RandomErasing: per-image rectangles set to 0 after normalisation (the mean colour);
* for self-supervised views (``dataloupe pretrain`` with ``augment: batched``): colour jitter
  on a share of the images, random greyscale, Gaussian blur with a per-image sigma (one
  separable grouped convolution) and solarisation, in the order of lightly's view transforms.

AutoAugment has no batched form here: when a recipe asks for it, it still runs per
image (v2) in the loader workers before this step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dataloupe.data._augment import AugmentConfig, normalize_batch

_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(lo: float, hi: float, n: int, device, g=None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) * (hi - lo) + lo


def _geometry(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    if cfg.rrc_scale is not None:
        area = _uniform(*cfg.rrc_scale, b, dev)
        logr = _uniform(math.log(cfg.rrc_ratio[0]), math.log(cfg.rrc_ratio[1]), b, dev)
        w = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)  # fraction of the side
        h = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)  # centre in [-1, 1], crop inside
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
    else:
        w = h = torch.ones(b, device=dev)
        cx = cy = torch.zeros(b, device=dev)
    flip = torch.where(torch.rand(b, device=dev) < cfg.hflip, -1.0, 1.0)
    ang = torch.zeros(b, device=dev)
    if cfg.rotation > 0:
        ang = _uniform(-cfg.rotation, cfg.rotation, b, dev) * (math.pi / 180)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos * w * flip, -sin * h, cx], 1),
                         torch.stack([sin * w * flip, cos * h, cy], 1)], 1)
    size = (cfg.output_size, cfg.output_size) if cfg.output_size else tuple(x.shape[-2:])
    grid = F.affine_grid(theta, [b, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` grey level (ITU-R 601 weights, as torchvision's grayscale)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _color(x: torch.Tensor, jitter) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    br, co, sa, hu = jitter
    if br > 0:
        x = (x * _uniform(max(0, 1 - br), 1 + br, b, dev).view(b, 1, 1, 1)).clamp_(0, 1)
    if co > 0:
        mean = _luma(x).mean((2, 3), keepdim=True)
        f = _uniform(max(0, 1 - co), 1 + co, b, dev).view(b, 1, 1, 1)
        x = (mean + (x - mean) * f).clamp_(0, 1)
    if sa > 0:
        gray = _luma(x)
        f = _uniform(max(0, 1 - sa), 1 + sa, b, dev).view(b, 1, 1, 1)
        x = (gray + (x - gray) * f).clamp_(0, 1)
    if hu > 0:
        a = _uniform(-hu, hu, b, dev) * 2 * math.pi
        yiq = _YIQ.to(dev, x.dtype)
        rot = torch.zeros(b, 3, 3, device=dev, dtype=x.dtype)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)
        m = torch.linalg.inv(yiq) @ rot @ yiq  # (B, 3, 3) RGB -> RGB
        x = torch.einsum("bij,bjhw->bihw", m, x).clamp_(0, 1)
    return x


def _chosen(p: float, b: int, dev) -> torch.Tensor:
    """``(B, 1, 1, 1)`` bool: which images a step with probability ``p`` applies to."""
    return (torch.rand(b, device=dev) < p).view(b, 1, 1, 1)


def _grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.where(_chosen(p, x.shape[0], x.device), _luma(x).expand_as(x), x)


def _blur(x: torch.Tensor, p: float, sigmas: tuple) -> torch.Tensor:
    """Gaussian blur, sigma in pixels per image (PIL's ``GaussianBlur(radius=sigma)`` as lightly
    uses it), the kernel wide enough for the largest sigma, edges reflected."""
    b, c, h, w = x.shape
    dev = x.device
    sigma = _uniform(sigmas[0], sigmas[1], b, dev)
    half = max(1, min(int(math.ceil(3 * sigmas[1])), (min(h, w) - 1) // 2))
    t = torch.arange(-half, half + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K): one kernel per image and channel
    y = F.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c).view(b, c, h, w)
    return torch.where(_chosen(p, b, dev), y, x)


def _solarize(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.where(_chosen(p, x.shape[0], x.device) & (x >= 0.5), 1.0 - x, x)


def _erase(x: torch.Tensor, p: float) -> torch.Tensor:
    b, _, hgt, wid = x.shape
    dev = x.device
    area = _uniform(0.02, 0.33, b, dev)
    logr = _uniform(math.log(0.3), math.log(3.3), b, dev)
    eh = (torch.sqrt(area / torch.exp(logr)) * hgt).clamp(1, hgt)
    ew = (torch.sqrt(area * torch.exp(logr)) * wid).clamp(1, wid)
    top = torch.rand(b, device=dev) * (hgt - eh)
    left = torch.rand(b, device=dev) * (wid - ew)
    ys = torch.arange(hgt, device=dev).view(1, hgt, 1)
    xs = torch.arange(wid, device=dev).view(1, 1, wid)
    inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
              & (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1)))
    on = (torch.rand(b, device=dev) < p).view(b, 1, 1)
    return x.masked_fill((inside & on).unsqueeze(1), 0.0)


def batch_augment(images: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Augment and normalise a ``(B, 3, S, S)`` uint8 batch on its device; each image its own draw.

    Returns:
        ``(B, 3, S, S)`` float32, normalised with ``cfg.mean``/``cfg.std``.

    Example:
        >>> x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
        >>> batch_augment(x, AugmentConfig(image_size=32, rotation=10)).shape
        torch.Size([8, 3, 32, 32])
    """
    x = images.float().div_(255.0)
    if cfg.rrc_scale is not None or cfg.hflip > 0 or cfg.rotation > 0 or cfg.output_size:
        x = _geometry(x, cfg)
    if cfg.color_jitter is not None and cfg.color_jitter_p > 0:
        jittered = _color(x, cfg.color_jitter)
        x = jittered if cfg.color_jitter_p >= 1 else torch.where(_chosen(cfg.color_jitter_p, len(x), x.device),
                                                                 jittered, x)
    if cfg.grayscale > 0:
        x = _grayscale(x, cfg.grayscale)
    if cfg.blur > 0:
        x = _blur(x, cfg.blur, cfg.blur_sigma)
    if cfg.solarize > 0:
        x = _solarize(x, cfg.solarize)
    x = normalize_batch(x.mul_(255.0), cfg.mean, cfg.std)
    if cfg.random_erasing > 0:
        x = _erase(x, cfg.random_erasing)
    return x

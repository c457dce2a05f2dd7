"""torchvision's published ImageNet weights for ``--init-weights imagenet``.

The files are the ones torchvision's model builders load (``IMAGENET1K_V1``), at the URLs its
``torchvision/models/resnet.py`` publishes; the eight hex digits in each name are the start of
the file's sha256, which torch.hub checks on download and we check again on every use. A file
already in the torch hub cache (``torch.hub.get_dir()/checkpoints``, ``$TORCH_HOME/hub`` when set)
is used as it is, so weights fetched once by torchvision, timm or this tool are not downloaded
again; where the network is closed, one line says where to put the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import UserError
from .models import get_architecture

BASE_URL = "https://download.pytorch.org/models/"
#: model name -> the file torchvision publishes for it (ImageNet-1k, its V1 weights)
IMAGENET_WEIGHTS = {
    "resnet18": BASE_URL + "resnet18-f37072fd.pth",
    "resnet34": BASE_URL + "resnet34-b627a593.pth",
    "resnet50": BASE_URL + "resnet50-0676ba61.pth",
    "resnet101": BASE_URL + "resnet101-63fe2227.pth",
    "resnet152": BASE_URL + "resnet152-394f9c45.pth",
    "resnext50_32x4d": BASE_URL + "resnext50_32x4d-7cdf4587.pth",
    "wide_resnet50_2": BASE_URL + "wide_resnet50_2-95faca4d.pth",
}
IMAGENET = "imagenet"  # the --init-weights value that asks for them


def hash_prefix(url: str) -> str:
    """The sha256 prefix in a torchvision file name: ``resnet18-f37072fd.pth`` -> f37072fd."""
    return url.rsplit("/", 1)[-1].rsplit(".", 1)[0].rsplit("-", 1)[-1]


def hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights(model: str, download: bool = True) -> Path:
    """The checked file of ``model``'s published ImageNet weights: from the hub cache, else
    downloaded into it (hash checked before it is moved in place); one line where neither works."""
    name = get_architecture(model).name
    url = IMAGENET_WEIGHTS.get(name)
    if url is None:
        raise UserError(f"--init-weights imagenet: torchvision publishes ImageNet weights for "
                        f"{', '.join(IMAGENET_WEIGHTS)}, not for {name}")
    prefix = hash_prefix(url)
    path = hub_checkpoints() / url.rsplit("/", 1)[-1]
    if not path.is_file():
        if not download:
            raise UserError(f"--init-weights imagenet: {path} is not there")
        _download(url, path, prefix)
    if not _sha256(path).startswith(prefix):
        raise UserError(f"--init-weights imagenet: {path} does not match its published sha256 "
                        f"({prefix}...); delete it to download it again")
    return path


def _download(url: str, path: Path, prefix: str) -> None:
    import sys

    import torch.hub

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # writes a temporary file beside it and moves it in place only if the hash matches
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix,
                                       progress=sys.stderr.isatty())
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or str(exc).strip().splitlines()[0]
        raise UserError(f"--init-weights imagenet: cannot download {url} ({reason}); fetch it "
                        f"where the network allows and place it at {path}, or pass a weights "
                        "file with --init-weights FILE") from None

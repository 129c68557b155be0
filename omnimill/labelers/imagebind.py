"""imagebind: ImageBind image embedding and the text embedding of the corpus's caption, in one joint space.

ImageBind (Girdhar et al., 2023, "ImageBind: One Embedding Space To Bind Them All") binds images, text,
audio, depth, thermal and IMU in one space, so later audio/video corpora can be compared with these labels.
It runs Meta's own code (`pip install git+https://github.com/facebookresearch/ImageBind`, which brings
timm, torchaudio, pytorchvideo, ...) on the released `imagebind_huge.pth` (ViT-H/14 vision tower,
4.5 GB, https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth); without that package the teacher
is refused when it is built, before any work. On PyPI, `imagebind-unofficial` 0.1.1 ships that code but
does not import with today's torchvision and setuptools as its dependencies resolve (`make imagebind` in
this repository installs a combination that does; README, Teachers).

The model is ImageBind's `ImageBindModel` at the sizes the checkpoint's weights have (embedding widths and
depths read from their shapes, head counts imagebind_huge's, which weights cannot show): for the released
file that is exactly `imagebind_huge`, and a small checkpoint of the same code and format loads as well.

The canonical view is resized to 224 (as ImageBind's own transform: bicubic resize, centre crop, CLIP
mean/std) and embedded. Stored per sample, D = 1024 for imagebind_huge:
- `embedding` (D,) float32: the vision embedding, L2-normalised (D = the checkpoint's out_embed_dim).
- `text_embedding` (D,) float32 and `has_text` () bool: the text tower's embedding of the corpus caption
  (77 BPE tokens at most), L2-normalised (ImageBind scales it by its logit scale; we undo that); zeros and
  False where a sample has no caption.
"""

from __future__ import annotations

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers import checkpoints
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec

INSTALL = "pip install git+https://github.com/facebookresearch/ImageBind"
DOWNLOAD = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
IMAGE_SIZE = 224  # ViT-H/14 at 224: 16 x 16 patches
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# imagebind_huge's attention heads per modality (vision and text set by imagebind_huge, the rest
# ImageBindModel's defaults); a weight's shape does not say how its width is split into heads.
HEADS = {"vision": 16, "text": 16, "audio": 12, "depth": 8, "thermal": 12, "imu": 8}
DROP_PATHS = {"audio_drop_path": 0.1, "imu_drop_path": 0.7}  # imagebind_huge's; no effect at inference
# Known ways the code fails to import, and what fixes them.
HINTS = {
    "pkg_resources": "ImageBind's data.py imports pkg_resources, which setuptools 81 and later no longer ship: "
                     "install setuptools<81",
    "torchvision.transforms.functional_tensor": "pytorchvideo 0.1.5 (its last PyPI release) imports a module "
                     "torchvision 0.17 removed: install pytorchvideo's main branch (PyPI: jj-pytorchvideo) instead",
}


def require_imagebind():
    """Meta's ImageBind modules, or a UserError saying how to install them."""
    try:
        from imagebind import data
        from imagebind.models import imagebind_model
    except ImportError as e:  # not installed, or installed without its own dependencies (torchaudio, ...)
        hint = f"; {HINTS[e.name]}" if e.name in HINTS else ""
        raise UserError(f"teacher imagebind needs Meta's ImageBind code, which cannot be imported here ({e}); "
                        f"install it on every worker with `{INSTALL}`{hint}") from None
    return imagebind_model, data


def architecture(shapes: dict[str, tuple]) -> dict:
    """ImageBindModel's arguments for a state dict's {name: shape}: widths and depths from the weights."""
    arguments = dict(DROP_PATHS, out_embed_dim=shapes["modality_heads.vision.2.weight"][0])
    for modality, heads in HEADS.items():
        trunk = f"modality_trunks.{modality}.blocks."
        arguments[f"{modality}_embed_dim"] = shapes[f"{trunk}0.attn.in_proj_weight"][1]
        arguments[f"{modality}_num_blocks"] = len({k[len(trunk):].split(".")[0] for k in shapes if k.startswith(trunk)})
        arguments[f"{modality}_num_heads"] = heads
    return arguments


class ImageBind(Teacher):
    name = "imagebind"
    renderer = "imagebind"
    needs_checkpoint = True
    default_checkpoint = ".checkpoints/imagebind_huge.pth"  # where ImageBind's own code downloads it

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        require_imagebind()
        self.path = checkpoints.resolve(spec.checkpoint or self.default_checkpoint, self.name,
                                        f"imagebind=/models/imagebind_huge.pth (download {DOWNLOAD})")
        if not self.path.is_file():
            raise UserError(f"teacher imagebind: {self.path} is a directory; pass the imagebind_huge.pth file")
        self.architecture = self.read_architecture()
        self.dim = self.architecture["out_embed_dim"]
        self.model = None

    def read_architecture(self) -> dict:
        """The model's sizes from the checkpoint's tensor shapes; the weights themselves are not read here."""
        import torch

        try:
            state = torch.load(self.path, map_location="meta", weights_only=True)
            return architecture({name: tuple(tensor.shape) for name, tensor in state.items()})
        except Exception as e:
            raise self.bad_checkpoint(e) from None

    def bad_checkpoint(self, error: Exception) -> UserError:
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        return UserError(f"teacher imagebind: {self.path} is not an ImageBind checkpoint "
                         f"({type(error).__name__}: {first_line}); download {DOWNLOAD}")

    def fields(self):
        d = self.dim
        return [
            Field("embedding", (d,), "float32", doc="L2-normalised ImageBind vision embedding", kind="embedding"),
            Field("text_embedding", (d,), "float32", doc="L2-normalised text embedding of the corpus caption",
                  kind="embedding"),
            Field("has_text", (), "bool", doc="the sample has a non-empty corpus caption; text_embedding is 0 if not",
                  kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "image_size": IMAGE_SIZE, "embed_dim": self.dim}

    def provenance(self) -> dict:
        import torch

        info = super().provenance()
        info.update(checkpoints.fingerprint(self.path))
        info["architecture"] = self.architecture
        info["libraries"]["torch"] = torch.__version__
        return info

    def load(self, device="auto", dtype="auto"):
        import torch

        from omnimill.labelers.torch_device import pick_device, pick_dtype

        imagebind_model, _ = require_imagebind()
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        model = imagebind_model.ImageBindModel(**self.architecture)  # imagebind_huge for the released file
        try:
            model.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
        except Exception as e:
            raise self.bad_checkpoint(e) from None
        self.model = model.to(self.device, self.dtype).eval()
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    def embed_images(self, views: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 views -> L2-normalised vision embeddings (B, D) float32."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(views).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # b h w c -> b c h w
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True, align_corners=False)
        x = ((x - self.mean) / self.std).to(self.dtype)
        with torch.inference_mode():
            vision = self.model({"vision": x})["vision"]
            return F.normalize(vision.float(), dim=-1).cpu().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised ImageBind text embeddings (n, D) float32, in the space of `embedding`."""
        import torch

        _, data = require_imagebind()
        if self.model is None:
            self.load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = data.load_and_transform_text(list(texts), self.device)  # (n, 77) BPE ids, ImageBind's tokenizer
        with torch.inference_mode():
            text = self.model({"text": tokens})["text"]
            return torch.nn.functional.normalize(text.float(), dim=-1).cpu().numpy()

    def __call__(self, batch: Batch):
        if self.model is None:
            self.load()
        captions = [info.caption.strip() for info in batch.infos]
        has_text = np.array([bool(c) for c in captions])
        text = np.zeros((len(batch), self.dim), np.float32)
        if has_text.any():
            text[has_text] = self.embed_text([c for c in captions if c])
        return {"embedding": self.embed_images(batch.views), "text_embedding": text, "has_text": has_text}

"""The teacher: SMPL body pose, shape and camera of every detected person (HMR2.0's fields, 4M-21's human_poses).

People are the `detection` teacher's person boxes (class `person_class`, best score first, at most
max_people). Each box is cropped from the canonical view (bilinear, torchvision's roi_align) to the model's
input size and normalised with ImageNet's mean and std, as HMR2.0's crops are. Per sample, P = max_people
(7: 4M-21's human_poses sequences hold up to 7 people), rows past `count` zero:

    boxes          (P, 4)        float32  the person's box x0, y0, x1, y1 in view pixels (ml-4m: bbox_xyxy)
    scores         (P,)          float32  the detector's confidence in that person
    global_orient  (P, 3, 3)     float32  the body's rotation (pred_smpl_params.global_orient)
    body_pose      (P, 23, 3, 3) float32  SMPL's 23 joint rotations, relative to their parents (.body_pose)
    betas          (P, 10)       float32  SMPL shape coefficients (.betas)
    camera         (P, 3)        float32  weak-perspective s, tx, ty in the crop's frame (pred_cam)
    count          ()            int32    people labelled
"""

from __future__ import annotations

import numpy as np

from hmr_plugin import standin
from omnimill.errors import UserError
from omnimill.labelers import checkpoints
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec
from omnimill.labelers.fields import define_kind

ROTATIONS = define_kind("rotation_matrices", "(P, 3, 3) or (P, J, 3, 3) float32 rotation matrices per person "
                                             "(and joint); zero rows are padding")
CAMERA = define_kind("weak_perspective_camera", "(P, 3) float32 s, tx, ty per person, in the person crop's frame")
MAX_PEOPLE = 7
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXAMPLE = "hmr_plugin.teacher:HMR2=/models/hmr2-standin"


class HMR2(Teacher):
    name = "hmr2"
    requires = ("detection",)
    needs_checkpoint = True
    options = {"max_people": (int, MAX_PEOPLE), "person_class": (int, None)}  # None: the detector's "person"

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        if not spec.checkpoint:
            raise UserError(f"teacher hmr2 needs its checkpoint directory: --teacher {EXAMPLE}")
        self.path = checkpoints.resolve(spec.checkpoint, self.name, EXAMPLE)
        try:
            self.model_config = standin.read_config(self.path)
        except ValueError as e:
            raise UserError(f"teacher hmr2: {e}; pass a directory written by hmr_plugin.standin.save") from None
        self.max_people = self.option("max_people")
        self.person_class = self.option("person_class")
        self.model = None

    def fields(self):
        p, j, b = self.max_people, self.model_config["body_joints"], self.model_config["betas"]
        return [
            Field("boxes", (p, 4), "float32", doc="person box x0, y0, x1, y1 in view pixels; 0 = padding", kind="boxes"),
            Field("scores", (p,), "float32", doc="detection confidence of the person; 0 = padding", kind="scores"),
            Field("global_orient", (p, 3, 3), "float32", doc="SMPL root rotation", kind=ROTATIONS),
            Field("body_pose", (p, j, 3, 3), "float32", doc="SMPL joint rotations, parent-relative", kind=ROTATIONS),
            Field("betas", (p, b), "float32", doc="SMPL shape coefficients", kind="embedding"),
            Field("camera", (p, 3), "float32", doc="weak-perspective camera s, tx, ty", kind=CAMERA),
            Field("count", (), "int32", doc="people labelled", kind="count"),
        ]

    def config(self):
        return {**super().config(), "max_people": self.max_people, "person_class": self.person_class,
                "model": self.model_config}

    def provenance(self) -> dict:
        import torch

        info = super().provenance()
        info.update(checkpoints.fingerprint(self.path))
        info["libraries"]["torch"] = torch.__version__
        return info

    def load(self, device="auto", dtype="auto"):
        import torch

        from omnimill.labelers.torch_device import pick_device, pick_dtype

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = standin.load(self.path).to(self.device, self.dtype)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def people(self, detection: dict) -> tuple[np.ndarray, np.ndarray]:
        """(image index, detection index) of every person to label: each image's first max_people persons."""
        classes, count = detection["classes"], detection["count"]
        person = detection["person_class"] if self.person_class is None else np.full(len(count), self.person_class)
        detected = np.arange(classes.shape[1])[None, :] < count[:, None]
        is_person = detected & (classes == person[:, None]) & (person[:, None] >= 0)
        keep = is_person & (np.cumsum(is_person, axis=1) <= self.max_people)  # detections come best first
        return np.nonzero(keep)  # row-major: image by image, best first

    def predict(self, views: np.ndarray, owner: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
        """The model on each person's crop: HMR2.0's outputs as float32 arrays, one row per person."""
        import torch
        from torchvision.ops import roi_align

        x = torch.from_numpy(np.ascontiguousarray(views)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        rois = torch.from_numpy(np.column_stack([owner, boxes]).astype(np.float32)).to(self.device)
        crops = roi_align(x, rois, output_size=tuple(self.model_config["crop"]), sampling_ratio=2, aligned=True)
        with torch.inference_mode():
            out = self.model(crops.to(self.dtype))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def __call__(self, batch: Batch):
        if self.model is None:
            self.load()
        detection = batch.upstream["detection"]
        owner, which = self.people(detection)
        out = {f.name: np.zeros((len(batch), *f.shape), f.dtype) for f in self.fields()}
        out["count"] = np.bincount(owner, minlength=len(batch)).astype(np.int32)
        if len(owner):
            slot = np.arange(len(owner)) - np.searchsorted(owner, owner)  # the person's row within its image
            boxes = detection["boxes"][owner, which].astype(np.float32)
            out["boxes"][owner, slot] = boxes
            out["scores"][owner, slot] = detection["scores"][owner, which]
            for name, value in self.predict(batch.views, owner, boxes).items():
                out[name][owner, slot] = value
        return out

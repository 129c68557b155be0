"""The stand-in for HMR2.0: person crop -> SMPL rotations, shape and camera, from a small net with random weights.

It has HMR2.0's outputs and their conventions, not its accuracy: every joint's rotation is predicted as 6
numbers and made a rotation matrix by Gram-Schmidt (Zhou et al., 2019, "On the Continuity of Rotation
Representations in Neural Networks"; HMR2.0's JOINT_REP '6d'), the global orientation first, then SMPL's
23 body joints; 10 shape coefficients (betas); a weak-perspective camera (s, tx, ty).

A checkpoint is a directory: config.json (the architecture) and model.safetensors (the weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

BODY_JOINTS = 23  # SMPL's joints below the root (the root's rotation is global_orient)
BETAS = 10  # SMPL shape coefficients HMR2.0 predicts
DEFAULTS = {"crop": [32, 24], "width": 8, "body_joints": BODY_JOINTS, "betas": BETAS}  # crop: H, W (HMR2.0: 256 x 192)


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) rotation matrices: the two 3-vectors, orthonormalised, are the first two columns."""
    a, b = x[..., :3], x[..., 3:]
    c1 = nn.functional.normalize(a, dim=-1)
    c2 = nn.functional.normalize(b - (c1 * b).sum(-1, keepdim=True) * c1, dim=-1)
    return torch.stack([c1, c2, torch.linalg.cross(c1, c2)], dim=-1)


class StandIn(nn.Module):
    def __init__(self, crop=(32, 24), width=8, body_joints=BODY_JOINTS, betas=BETAS):
        super().__init__()
        self.crop, self.body_joints, self.betas = tuple(crop), body_joints, betas
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * width, (body_joints + 1) * 6 + betas + 3)

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) normalised person crops -> HMR2.0's pred_smpl_params and pred_cam, per person."""
        out = self.head(self.features(crops))
        n, j = len(crops), self.body_joints + 1
        rotations = rotation_from_6d(out[:, :j * 6].reshape(n, j, 6))
        betas = out[:, j * 6:j * 6 + self.betas]
        return {"global_orient": rotations[:, 0], "body_pose": rotations[:, 1:], "betas": betas,
                "camera": out[:, -3:]}


def save(model: StandIn, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"crop": list(model.crop), "width": model.head.in_features // 8, "body_joints": model.body_joints,
              "betas": model.betas}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    return folder


def read_config(folder: Path) -> dict:
    """The architecture a checkpoint directory declares; ValueError if it is not a stand-in checkpoint."""
    path = Path(folder) / "config.json"
    if not path.is_file() or not (Path(folder) / "model.safetensors").is_file():
        raise ValueError(f"{folder} holds no config.json and model.safetensors")
    config = {**DEFAULTS, **json.loads(path.read_text())}
    if set(config) != set(DEFAULTS):
        raise ValueError(f"{path} has keys {sorted(set(config) - set(DEFAULTS))} a stand-in does not know")
    return config


def load(folder: Path) -> StandIn:
    """The model a checkpoint directory holds; every weight must be there (strict)."""
    from safetensors.torch import load_file

    model = StandIn(**read_config(folder))
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model.eval()

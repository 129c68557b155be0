"""Real-size, random-weight checkpoints of the detection and pose teachers' defaults, for benchmarks/teachers.py.

`CHECKPOINTS[name](path)` saves the default architecture with random weights to `path` (skipped when already
there) and returns (the `--teacher` spec, GFLOPs per image at the teacher's default input size). Speed does not
depend on the weights' values, and this machine cannot download the real ones.

pose reads detection's person boxes. With random detector weights the number of "people" per image is
arbitrary, so `UPSTREAM["pose"](n, view_size)` gives a hand-made detection output instead: PEOPLE people per
image. Pose's GFLOPs per image are for that many people.

FLOPs count 2 per multiply-add; the terms below are checked against torch.utils.flop_counter on the models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PEOPLE = 4  # people per image in the pose benchmark's hand-made detections

COCO_CLASSES = (  # the 80 COCO classes in the contiguous order RT-DETR checkpoints use (0 = person)
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier "
    "toothbrush").split()
COCO_KEYPOINTS = ("Nose L_Eye R_Eye L_Ear R_Ear L_Shoulder R_Shoulder L_Elbow R_Elbow L_Wrist R_Wrist L_Hip R_Hip "
                  "L_Knee R_Knee L_Ankle R_Ankle").split()

# RT-DETRv2-R50 (PekingU/rtdetr_v2_r50vd) on a 640 x 640 input, 42.9M parameters:
#   ResNet-50-vd backbone   70.6  ResNet-50 is 4.1 GMACs at 224^2; x (640/224)^2 = 8.16 -> 33.5 GMACs,
#                                 + 1.9 for the vd stem (3x3 convs 3-32-32-64 at 320^2 instead of one 7x7)
#                                 = 35.3 GMACs = 70.6 GFLOPs
#   hybrid encoder          47.8  dominated by CCFM's RepVGG blocks at stride 8 (80 x 80, 256 channels):
#                                 3 blocks x 6400 px x 256 x 256 x (9 + 1) taps x 2 = 25.2; the same blocks
#                                 at stride 16 twice: 2 x 6.3; AIFI attention on 20 x 20 = 400 tokens: 0.6
#   input projections        4.0  1x1 convs 512/1024/2048 -> 256 at 80^2/40^2/20^2 (encoder) + 3 more (decoder)
#   query selection          3.7  8400 anchors x (256 x 256 + 256 x 80 + box MLP) x 2
#   decoder                 11.0  6 layers x 300 queries: self-attention, deformable cross-attention, FFN 1024
#   total                  137.1  (the RT-DETR paper reports 136)
DETECTION_GFLOPS = 137.1

# ViTPose-B (usyd-community/vitpose-base-simple) on one 256 x 192 person crop:
#   tokens N = (256 / 16) x (192 / 16) = 192, width d = 768, 12 layers
#   per layer: projections + MLP 12 N d^2 = 1.359 G multiply-adds, attention 2 N^2 d = 0.057 G -> 2.831 GFLOPs
#   12 layers 33.98 + patch embedding 192 x 768 x 768 x 2 = 0.23 + head 3x3 conv 768 -> 17 on 64 x 48: 0.72
POSE_GFLOPS_PER_PERSON = 34.93


def make_detection(path: Path) -> tuple[str, float]:
    from transformers import RTDetrImageProcessor, RTDetrV2Config, RTDetrV2ForObjectDetection

    if not (path / "config.json").exists():
        # the defaults are RT-DETRv2-R50's: ResNet-50-vd, 256-d hybrid encoder, 300 queries, 6 decoder layers
        config = RTDetrV2Config(id2label=dict(enumerate(COCO_CLASSES)))
        RTDetrV2ForObjectDetection(config).save_pretrained(path)
        RTDetrImageProcessor().save_pretrained(path)  # 640 x 640, no mean/std, as the hub checkpoint's
    return f"omnimill.labelers.detection:Detection={path}", DETECTION_GFLOPS


def make_pose(path: Path) -> tuple[str, float]:
    from transformers import VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    if not (path / "config.json").exists():
        # the defaults are ViTPose-B's: ViT-B/16 backbone on 256 x 192 crops, simple decoder, 17 keypoints
        config = VitPoseConfig(id2label=dict(enumerate(COCO_KEYPOINTS)))
        VitPoseForPoseEstimation(config).save_pretrained(path)
        VitPoseImageProcessor().save_pretrained(path)
    return f"omnimill.labelers.pose:Pose={path}", PEOPLE * POSE_GFLOPS_PER_PERSON


def people_upstream(n: int, view_size: int) -> dict:
    """A detection output with PEOPLE person boxes per image (class 0), spread over the view."""
    k = 100
    boxes = np.zeros((n, k, 4), np.float32)
    s = view_size
    for p in range(PEOPLE):  # side by side, each a quarter of the width and most of the height
        boxes[:, p] = [p * s / PEOPLE, 0.1 * s, (p + 1) * s / PEOPLE, 0.9 * s]
    classes = np.full((n, k), -1, np.int32)
    classes[:, :PEOPLE] = 0
    scores = np.zeros((n, k), np.float32)
    scores[:, :PEOPLE] = 0.9
    return {"detection": {"boxes": boxes, "classes": classes, "scores": scores,
                          "count": np.full(n, PEOPLE, np.int32), "person_class": np.zeros(n, np.int32)}}


CHECKPOINTS = {"detection": make_detection, "pose": make_pose}
UPSTREAM = {"pose": people_upstream}  # teacher -> (n, view_size) -> batch.upstream for a benchmark without detection

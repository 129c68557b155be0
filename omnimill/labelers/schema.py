"""Schema facts shared by the pose teacher, its serializer and its picture: written once, here."""

# COCO's 17 keypoints, the order of ViTPose's id2label; a flip swaps each left_* with its right_*.
COCO_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"]

# The limbs joining them, as COCO's person category defines its skeleton (0-based here).
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))

# Keypoints scored below this are not seen: <kp_none> in sequences, not drawn in pictures (ViTPose's usual cut).
KEYPOINT_THRESHOLD = 0.3

"""3D human pose and shape as an out-of-tree teacher: `--teacher hmr_plugin.teacher:HMR2` (4M-21's `human_poses`).

4M-21 labels people with HMR2.0 (Goel et al., 2023, "Humans in 4D", github.com/shubham-goel/4D-Humans):
for each person box of a detector, a crop goes through a ViT-H and a transformer head that predict SMPL
parameters (Loper et al., 2015) as rotation matrices, and a weak-perspective camera. Neither HMR2.0's code
nor its weights are on PyPI, and SMPL's body model needs a licence, so omnimill does not ship this teacher:
this package shows the shape of one, with a stand-in model in place of HMR2.0.

- teacher.py: the teacher. People are the `detection` teacher's person boxes (best first, at most 7 as in
  4M-21's human_poses sequences); it stores per person what ml-4m's HumanPoseTransform reads from HMR2.0's
  output (`bbox_xyxy`, `pred_smpl_params` {global_orient, body_pose, betas}, `pred_cam`), under the field
  kinds it defines (rotation matrices, camera).
- standin.py: the stand-in model (a small convolutional net with random weights, saved as safetensors
  with a config.json) and the 6D -> rotation matrix map HMR2.0's head uses.

Plugging in the real HMR2.0 keeps teacher.py and replaces `load` and `predict`: install 4D-Humans on every
worker (`pip install git+https://github.com/shubham-goel/4D-Humans.git`; its `hmr2` package), fetch its
checkpoint (`hmr2.models.download_models()` unpacks hmr2_data.tar.gz into ~/.cache/4DHumans), register at
https://smplify.is.tue.mpg.de, accept the SMPL licence and put `basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`
where 4D-Humans looks (`data/`, converted to ~/.cache/4DHumans/data/smpl/SMPL_NEUTRAL.pkl on first load).
`load` calls `hmr2.models.load_hmr2(checkpoint)`; `predict` gives it the person crops HMR2.0 expects
(hmr2.datasets.vitdet_dataset.ViTDetDataset: 256 x 192 around each box, its mean and std) and returns its
`pred_smpl_params` and `pred_cam`. Installed as a package, the teacher is declared as an entry point so
that stores naming it may import it (omnimill.labelers.registry.stored_teacher):

    [project.entry-points."omnimill.teachers"]
    hmr2 = "hmr_plugin.teacher:HMR2"
"""

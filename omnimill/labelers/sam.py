"""sam: Segment Anything automatic masks (Kirillov et al., 2023): every instance, overlaps kept; an id map; SAM edges.

Paper: "Segment Anything", Kirillov et al., ICCV 2023 (arXiv:2304.02643). 4M-21 uses SAM instances and
SAM edges (instance boundaries) as two of its modalities; this teacher makes both from one pass.

Checkpoints are the official segment-anything `.pth` state dicts, given as a local file (they are not on
a model hub in this format; download once, then `--teacher sam=/models/sam_vit_b_01ec64.pth`):
    vit_b  https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth   (375 MB)
    vit_l  https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth   (1.2 GB)
    vit_h  https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth   (2.5 GB)
The architecture is read off the state dict (embed dim from the patch embedding, depth from the block
count, heads from the relative-position tables, global-attention blocks from which tables span the whole
image, image size from the position embedding), so all three load, and so does any smaller model saved the
same way. The mask decoder's 8 attention heads do not show in its weights; every SAM uses 8.

Automatic mask generation, done our way. SAM's own `SamAutomaticMaskGenerator` runs one image at a time,
64 prompts per decoder call, and moves every candidate mask to the CPU as RLE; published timings put it at
11-80x the image encoder's time, almost all of it in that post-processing. Here everything stays batched
on the device and only the finished arrays come back:
  1. the batch of views is resized to the encoder's input (1024², bilinear, as ResizeLongestSide does;
     views are square so nothing is padded) and normalised with SAM's pixel mean/std: one encoder pass
     gives (B, 256, 64, 64) embeddings.
  2. a grid of points_per_side² point prompts per image (32² = 1024, cell centres) goes through the prompt
     encoder and mask decoder in chunks of points_per_batch prompts (256); a chunk spans several images
     when points_per_batch is a multiple of points_per_side². Multimask output: 3 masks per prompt.
  3. filters: drop masks with predicted IoU <= 0.88; upsample the 256² logits of the rest to the S x S
     view (bilinear, one step; SAM goes through 1024² first); drop masks with stability score < 0.95
     (IoU of the masks thresholded at +1 and -1) and empty ones; boxes; per-image box NMS at IoU 0.7
     (torchvision batched_nms); keep the max_instances best by predicted IoU.
  4. survivors only: paint the instance map as if largest masks first, so small ones stay visible on top;
     SAM edges = pixels with a 4-neighbour of another id (both sides of a boundary, 2 px wide); and every
     survivor's own mask inside its box, resampled to 64 x 64 (masks64: 4M-21's instance representation;
     on the device, a cell is on when the mask covers at least half of it), so instances hidden under
     others in the map are all still there.
Where the view is as large as the encoder input (S = 1024 for SAM), both resizes are identities and this
gives SAM's own AMG masks and scores up to float rounding (tests/test_sam.py checks it on a small model).
Boxes here end at pixel edges (x1 = last column + 1; SAM's end on the last column), so NMS may decide a
borderline pair differently.
Cost per image, ViT-B: encoder 972 GFLOP at 1024² (64² = 4096 tokens of 16² pixels) + decoder 3.6 GFLOP per
prompt x 1024 prompts = 4.7 TFLOP, 79% of it in the decoder (arithmetic in benchmarks/checkpoints_sam.py);
points_per_side = 16 cuts the decoder's share 4x.
No crop layers (SAM's crop_n_layers = 0 default): the view is small already (384 px vs SAM's 1024 input),
and crops would multiply the encoder and decoder cost by 1 + 4 + ... per layer.

Stored per sample, S = view size (384), K = max_instances (128), ids 1..count ordered by score (1 = best):
    instances (S, S) uint16   instance id per view pixel, 0 = no mask
    boxes     (K, 4) float32  x0, y0, x1, y1 of each mask in view pixels (pixel edges: x1 = last column + 1)
    scores    (K,)   float32  SAM's predicted IoU, best first
    areas     (K,)   int32    mask area in view pixels (before painting; an instance may be partly covered)
    count     ()     int32    instances kept (rows past it are zero)
    edges     (S, S) bool     instance boundaries
    masks64   (K, 64, 64) bool  each instance's whole mask inside its box, resampled to 64 x 64 (overlaps kept;
                              `paste_in_boxes` puts them back on the view)
The whole-view masks themselves are not stored: K x S x S bits per sample (18.9 MB at K = 128, S = 384) for
what masks64 + boxes give back to within a cell of 1/64 of the box (1 view pixel for boxes up to 64 px).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers import checkpoints
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec

# Defaults, overridable with --option sam.KEY=VALUE (SAM.options). The filter values are those of SAM's AMG.
POINTS_PER_SIDE = 32  # 32² = 1024 point prompts per image
POINTS_PER_BATCH = 256  # prompts per decoder call; 256 x (256 x 64 x 64) fp32 image tokens ≈ 1 GiB
PRED_IOU_THRESH = 0.88  # keep masks whose predicted IoU is above this
STABILITY_SCORE_THRESH = 0.95  # ... and whose stability score is at least this
STABILITY_SCORE_OFFSET = 1.0  # stability = IoU(logits > +offset, logits > -offset)
BOX_NMS_THRESH = 0.7  # box IoU above which the lower-scored mask is a duplicate
MAX_INSTANCES = 128  # instances kept per image, best predicted IoU first
MASK_SIZE = 64  # side of each instance's mask resampled in its box (4M-21's 64 x 64)
ENCODER_BATCH = 8  # images per encoder call: a global-attention block holds B x heads x 4096² scores

DECODER_HEADS = 8  # not visible in the weights; every SAM mask decoder has 8
VARIANTS = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}  # (embed dim, depth) -> name
URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"


class SAM(Teacher):
    name = "sam"
    serializer = "sam"
    renderer = "sam"
    needs_checkpoint = True
    default_checkpoint = "sam_vit_b_01ec64.pth"  # the official ViT-B file (URL above), looked for here
    options = {"points_per_side": (int, POINTS_PER_SIDE), "points_per_batch": (int, POINTS_PER_BATCH),
               "pred_iou_thresh": (float, PRED_IOU_THRESH), "stability_score_thresh": (float, STABILITY_SCORE_THRESH),
               "stability_score_offset": (float, STABILITY_SCORE_OFFSET), "box_nms_thresh": (float, BOX_NMS_THRESH),
               "max_instances": (int, MAX_INSTANCES), "encoder_batch": (int, ENCODER_BATCH)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        for key in self.options:  # points_per_side, ..., encoder_batch
            setattr(self, key, self.option(key))
        if min(self.points_per_side, self.points_per_batch, self.encoder_batch) < 1:
            raise UserError("teacher sam: points_per_side, points_per_batch and encoder_batch must be >= 1")
        if not 1 <= self.max_instances <= 65535:  # ids are stored as uint16
            raise UserError(f"teacher sam: max_instances must be 1..65535, not {self.max_instances}")

        self.path = checkpoints.resolve(spec.checkpoint or self.default_checkpoint, self.name,
                                        f"sam=/models/sam_vit_b_01ec64.pth (download: {URL})")
        try:
            self.arch = infer_architecture(self._state_dict())  # shapes only: the file is memory-mapped
        except ValueError as e:
            raise self.bad_checkpoint(str(e)) from None
        self.model = None

    def _state_dict(self) -> dict:
        import torch

        if self.path.is_dir():
            raise self.bad_checkpoint("it is a directory; SAM takes the official .pth file")
        try:
            try:  # mmap: a 2.5 GB file costs nothing until its tensors are touched; weights_only: no pickled code
                state = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                state = torch.load(self.path, map_location="cpu", weights_only=True)  # pre-1.6 format: no mmap
        except Exception as e:
            first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise self.bad_checkpoint(f"{type(e).__name__}: {first_line}") from None
        if not isinstance(state, dict):
            raise self.bad_checkpoint(f"it holds a {type(state).__name__}, not a state dict")
        return state

    def bad_checkpoint(self, reason: str) -> UserError:
        return UserError(f"teacher sam: {self.path} is not a segment-anything checkpoint ({reason}); pass an "
                         f"official sam_vit_b/l/h .pth state dict, e.g. --teacher sam=/models/sam_vit_b_01ec64.pth")

    def fields(self):
        s, k = self.view_size, self.max_instances
        return [
            Field("instances", (s, s), "uint16", dense=True, doc="instance id per pixel, 0 = none, 1 = best score",
                  kind="instances"),
            Field("boxes", (k, 4), "float32", doc="x0, y0, x1, y1 per instance in view pixels (x1 exclusive)",
                  kind="boxes"),
            Field("scores", (k,), "float32", doc="predicted IoU per instance, best first", kind="scores"),
            Field("areas", (k,), "int32", doc="mask area per instance in view pixels", kind="scalar"),
            Field("count", (), "int32", doc="instances kept; rows past it are zero", kind="count"),
            Field("edges", (s, s), "bool", dense=True, doc="SAM edges: boundaries of the instance map", kind="binary"),
            Field("masks64", (k, MASK_SIZE, MASK_SIZE), "bool", kind="instance_masks",
                  doc="each instance's mask inside its box, resampled to 64 x 64 (overlaps kept)"),
        ]

    def config(self):
        speed_only = ("points_per_batch", "encoder_batch")  # batching changes speed, not labels: resumable
        base = {k: v for k, v in super().config().items() if k not in speed_only}
        return {**base, "model": self.arch["variant"], "image_size": self.arch["image_size"],
                "embed_dim": self.arch["embed_dim"], "depth": self.arch["depth"],
                "points_per_side": self.points_per_side, "pred_iou_thresh": self.pred_iou_thresh,
                "stability_score_thresh": self.stability_score_thresh,
                "stability_score_offset": self.stability_score_offset, "box_nms_thresh": self.box_nms_thresh,
                "max_instances": self.max_instances, "crop_n_layers": 0}

    def provenance(self):
        import importlib.metadata

        import torch
        import torchvision

        info = super().provenance()
        info.update(checkpoints.fingerprint(self.path))
        info["libraries"].update(torch=torch.__version__, torchvision=torchvision.__version__,
                                 segment_anything=importlib.metadata.version("segment-anything"))
        return info

    def load(self, device="auto", dtype="auto"):
        import torch

        from omnimill.labelers.torch_device import pick_device, pick_dtype

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        model = build_model(self.arch)
        try:
            missing, unexpected = model.load_state_dict(self._state_dict(), strict=False)
        except RuntimeError as e:  # a tensor of another shape
            raise self.bad_checkpoint(" ".join(str(e).split())[:300]) from None
        if missing or unexpected:
            raise self.bad_checkpoint(f"missing {', '.join(missing[:3]) or 'nothing'}; "
                                      f"unexpected {', '.join(unexpected[:3]) or 'nothing'}")
        model = model.to(self.device).eval()
        # The prompt encoder stays float32: segment-anything feeds its Fourier-feature matrix float32
        # coordinates (a bf16 matrix would not multiply with them), and it costs nothing next to the rest.
        model.image_encoder.to(self.dtype)
        model.mask_decoder.to(self.dtype)
        self.model = model
        grid = point_grid(self.points_per_side)
        self.grid = torch.from_numpy(grid).to(self.device)  # (n, 2) x, y in 0..1 of the view
        with torch.inference_mode():
            self.image_pe = model.prompt_encoder.get_dense_pe().to(self.dtype)  # (1, E, g, g)

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        s, k = self.view_size, self.max_instances
        out = {"instances": np.zeros((len(batch), s, s), np.uint16), "boxes": np.zeros((len(batch), k, 4), np.float32),
               "scores": np.zeros((len(batch), k), np.float32), "areas": np.zeros((len(batch), k), np.int32),
               "count": np.zeros(len(batch), np.int32), "edges": np.zeros((len(batch), s, s), bool),
               "masks64": np.zeros((len(batch), k, MASK_SIZE, MASK_SIZE), bool)}
        with torch.inference_mode():
            embeddings = self.encode(batch.views)
            # images per round: a round's prompts fill whole decoder calls where the sizes allow
            per_round = max(1, self.points_per_batch // len(self.grid))
            for first in range(0, len(batch), per_round):
                images = list(range(first, min(first + per_round, len(batch))))
                masks, scores, boxes, areas, image = self.segment(embeddings, images)
                for i, mine in zip(images, best_per_image(boxes, scores, image, images, self.box_nms_thresh, k)):
                    n = len(mine)  # from here on only the survivors: n <= K masks per image
                    ids = paint_instances(masks[mine])
                    out["instances"][i] = ids.cpu().numpy()
                    out["edges"][i] = instance_edges(ids).cpu().numpy()
                    out["count"][i] = n
                    out["scores"][i, :n] = scores[mine].cpu().numpy()
                    out["boxes"][i, :n] = boxes[mine].cpu().numpy()
                    out["areas"][i, :n] = areas[mine].cpu().numpy()
                    out["masks64"][i, :n] = masks_in_boxes(masks[mine], boxes[mine]).cpu().numpy()
        return out

    def encode(self, views: np.ndarray):
        """(B, S, S, 3) uint8 views -> (B, E, g, g) image embeddings, encoder_batch images at a time."""
        import torch
        import torch.nn.functional as F

        size = self.arch["image_size"]
        parts = []
        for start in range(0, len(views), self.encoder_batch):
            x = torch.from_numpy(views[start:start + self.encoder_batch]).to(self.device)
            x = x.permute(0, 3, 1, 2).float()  # b h w c -> b c h w, 0..255 as SAM's pixel mean/std expect
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = self.model.preprocess(x)  # normalise; pads to the square input (a no-op for square views)
            parts.append(self.model.image_encoder(x.to(self.dtype)))
        return torch.cat(parts)

    def segment(self, embeddings, images: list[int]):
        """Every prompt of `images` through the decoder, points_per_batch at a time; the masks that pass the filters.

        Returns, on the device, masks (m, S, S) bool, scores (m,), boxes (m, 4), areas (m,), image index (m,).
        """
        import torch

        n, step = len(self.grid), self.points_per_batch
        image_of = torch.tensor(images, device=self.device).repeat_interleave(n)  # (R * n,)
        points = self.grid.repeat(len(images), 1)  # (R * n, 2)
        found = []
        for i in range(0, len(image_of), step):
            logits, iou = self.decode(embeddings, image_of[i:i + step], points[i:i + step])  # (P, 3, h, w), (P, 3)
            found.append(select_masks(logits.flatten(0, 1), iou.flatten(),
                                      image_of[i:i + step].repeat_interleave(logits.shape[1]), self.view_size,
                                      self.pred_iou_thresh, self.stability_score_thresh, self.stability_score_offset))
        return tuple(torch.cat(parts) for parts in zip(*found))

    def decode(self, embeddings, image_of, points):
        """Prompt encoder + mask decoder for P point prompts, each on its own image's embedding.

        SAM's MaskDecoder.forward repeats one image's embedding for every prompt; here each prompt gathers
        the embedding of its image, so one call serves prompts of several images. Same modules, same maths.
        Returns multimask logits (P, 3, 4g, 4g) and predicted IoU (P, 3), float32.
        """
        import torch

        sam, size = self.model, self.arch["image_size"]
        coords = (points * size)[:, None, :]  # (P, 1, 2) in encoder input pixels; the view maps onto all of it
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)  # 1 = foreground point
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        decoder = sam.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])  # (1 + T, E)
        tokens = torch.cat([tokens.expand(len(points), -1, -1), sparse.to(self.dtype)], dim=1)
        src = embeddings[image_of] + dense.to(self.dtype)  # (P, E, g, g)
        p, e, g, _ = src.shape
        hs, src = decoder.transformer(src, self.image_pe.expand(p, -1, -1, -1), tokens)
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(p, e, g, g))  # (P, E/8, 4g, 4g)
        mask_tokens = hs[:, 1:1 + decoder.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, t]) for t, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        logits = (hyper @ upscaled.flatten(2)).view(p, -1, *upscaled.shape[-2:])  # (P, T, 4g, 4g)
        iou = decoder.iou_prediction_head(hs[:, 0])  # (P, T)
        return logits[:, 1:].float(), iou[:, 1:].float()  # token 0 is the single-mask output; multimask = 1..3


# ---------------------------------------------------------------- architecture from the state dict


def infer_architecture(state: dict) -> dict:
    """SAM's hyper-parameters from the shapes in its state dict. Raises ValueError(reason) for anything else."""

    def shape(key: str) -> tuple:
        if key not in state:
            raise ValueError(f"it has no {key!r}")
        return tuple(state[key].shape)

    def count(prefix: str) -> int:  # numbered submodules under prefix: blocks.0, blocks.1, ...
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    embed_dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]  # (1, g, g, D): g = image_size / patch
    depth = count("image_encoder.blocks.")
    rel = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]  # (2 * side - 1, head_dim)
    global_blocks = [i for i, (length, _) in enumerate(rel) if length == 2 * grid - 1]
    windows = {(length + 1) // 2 for i, (length, _) in enumerate(rel) if i not in global_blocks}
    if len(windows) > 1:
        raise ValueError(f"its blocks have {len(windows)} window sizes, SAM's have one")
    prompt_dim = shape("prompt_encoder.point_embeddings.0.weight")[1]
    cross = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    arch = {
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_heads": embed_dim // rel[0][1],
        "window_size": windows.pop() if windows else 0,
        "global_attn_indexes": global_blocks,
        "mlp_dim": shape("image_encoder.blocks.0.mlp.lin1.weight")[0],
        "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state,
        "out_chans": shape("image_encoder.neck.0.weight")[0],
        "prompt_dim": prompt_dim,
        "mask_in_chans": shape("prompt_encoder.mask_downscaling.3.weight")[0],
        "multimask_outputs": shape("mask_decoder.mask_tokens.weight")[0] - 1,
        "decoder_depth": count("mask_decoder.transformer.layers."),
        "decoder_mlp_dim": shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        "attention_downsample_rate": prompt_dim // cross,
        "iou_head_depth": count("mask_decoder.iou_prediction_head.layers."),
        "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    }
    arch["variant"] = VARIANTS.get((embed_dim, depth), f"vit_{embed_dim}x{depth}")
    return arch


def build_model(arch: dict):
    """A segment-anything `Sam` of the given architecture, with random weights."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch["image_size"] // arch["patch_size"]
    encoder = ImageEncoderViT(
        img_size=arch["image_size"], patch_size=arch["patch_size"], embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"], mlp_ratio=arch["mlp_dim"] / arch["embed_dim"], out_chans=arch["out_chans"],
        qkv_bias=arch["qkv_bias"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=arch["window_size"], global_attn_indexes=tuple(arch["global_attn_indexes"]))
    prompt = PromptEncoder(embed_dim=arch["prompt_dim"], image_embedding_size=(grid, grid),
                           input_image_size=(arch["image_size"], arch["image_size"]),
                           mask_in_chans=arch["mask_in_chans"])
    transformer = TwoWayTransformer(depth=arch["decoder_depth"], embedding_dim=arch["prompt_dim"],
                                    num_heads=DECODER_HEADS, mlp_dim=arch["decoder_mlp_dim"],
                                    attention_downsample_rate=arch["attention_downsample_rate"])
    decoder = MaskDecoder(transformer_dim=arch["prompt_dim"], transformer=transformer,
                          num_multimask_outputs=arch["multimask_outputs"], iou_head_depth=arch["iou_head_depth"],
                          iou_head_hidden_dim=arch["iou_head_hidden_dim"])
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)  # SAM's pixel mean/std


# ---------------------------------------------------------------- mask arithmetic


def point_grid(points_per_side: int) -> np.ndarray:
    """(n², 2) float32 x, y in 0..1: the centres of an n x n grid of cells over the image, row by row."""
    centres = (np.arange(points_per_side, dtype=np.float32) + 0.5) / points_per_side
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def select_masks(logits, iou, image, view_size: int, pred_iou_thresh: float, stability_score_thresh: float,
                 stability_score_offset: float):
    """SAM's AMG filters, on the device: (m, h, w) low-res logits, (m,) predicted IoU, (m,) image index ->
    masks (n, S, S) bool on the view grid, scores (n,), boxes (n, 4), areas (n,), image index (n,) of the survivors.
    """
    import torch.nn.functional as F

    if pred_iou_thresh > 0:  # as in SAM: a zero threshold disables the filter
        keep = iou > pred_iou_thresh
        logits, iou, image = logits[keep], iou[keep], image[keep]
    s = view_size  # upsample only what passed: 3 x 256 prompts x S² floats otherwise
    logits = F.interpolate(logits[:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    masks = logits > 0  # SAM's mask threshold
    areas = masks.sum((1, 2))
    keep = areas > 0
    if stability_score_thresh > 0:
        keep &= stability_score(logits, stability_score_offset) >= stability_score_thresh
    masks, iou, image, areas = masks[keep], iou[keep], image[keep], areas[keep]
    return masks, iou, mask_boxes(masks), areas, image


def best_per_image(boxes, scores, image, images: list[int], nms_thresh: float, max_instances: int) -> list:
    """Box NMS within each image (one batched_nms call for all), then the max_instances best of each.

    Returns per image of `images` the indices of its survivors, best score first.
    """
    from torchvision.ops import batched_nms

    keep = batched_nms(boxes, scores, image, nms_thresh)  # sorted by decreasing score
    return [keep[image[keep] == i][:max_instances] for i in images]


def stability_score(logits, offset: float):
    """IoU of the mask thresholded at +offset with the one at -offset: (m, H, W) logits -> (m,).

    The first is inside the second, so IoU = area(> +offset) / area(> -offset); a mask that barely
    changes as the cutoff moves is a confident one.
    """
    inner = (logits > offset).sum((1, 2))
    outer = (logits > -offset).sum((1, 2))
    return inner / outer.clamp(min=1)


def mask_boxes(masks):
    """(m, H, W) bool -> (m, 4) float32 x0, y0, x1, y1 around each mask, in pixel edges (x1 = last column + 1)."""
    import torch

    if len(masks) == 0:
        return torch.zeros((0, 4), device=masks.device)
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2).byte(), masks.any(1).byte()  # (m, H), (m, W)
    y0, x0 = rows.argmax(1), cols.argmax(1)  # argmax returns the first maximum: the first row/column in the mask
    y1, x1 = h - rows.flip(1).argmax(1), w - cols.flip(1).argmax(1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def masks_in_boxes(masks, boxes, size: int = MASK_SIZE):
    """(m, H, W) bool masks and their (m, 4) pixel-edge boxes -> (m, size, size) bool: each mask inside its box.

    A cell is on when the mask covers at least half of it (area_resample: exact shares, whatever the box's
    size), so a mask that fills its box (a rectangle) comes out all on, and only its box's pixels count.
    """
    return area_resample(masks, boxes, size) >= HALF


def paste_in_boxes(masks, boxes, height: int, width: int) -> np.ndarray:
    """The inverse of masks_in_boxes: (m, s, s) masks and (m, 4) boxes in pixels -> (m, height, width) bool.

    Each mask is resampled the same way (area shares, on at >= 1/2) to its box rounded to whole pixels and
    put there; the part of a box outside the picture is dropped. Overlapping instances each keep their mask.
    """
    import torch

    masks, boxes = np.asarray(masks, bool), np.asarray(boxes, np.float64)
    out = np.zeros((len(masks), height, width), bool)
    for j, (mask, box) in enumerate(zip(masks, boxes)):
        x0, y0, x1, y1 = (int(v) for v in np.rint(box))
        if x1 <= x0 or y1 <= y0:
            continue
        whole = torch.tensor([[0.0, 0.0, mask.shape[1], mask.shape[0]]])
        resized = (area_resample(torch.from_numpy(mask)[None], whole, (y1 - y0, x1 - x0))[0] >= HALF).numpy()
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y1, height), min(x1, width)
        if bottom > top and right > left:
            out[j, top:bottom, left:right] = resized[top - y0:bottom - y0, left - x0:right - x0]
    return out


HALF = 0.5 - 1e-4  # "at least half covered", with float sums of exact halves counted as half


def area_resample(masks, windows, size):
    """The share of each output cell that a mask covers: (n, H, W) masks (bool or float tensors), (n, 4) windows
    x0, y0, x1, y1 in pixel edges of that grid -> (n, h, w) float; size = h = w, or (h, w).

    Each window is cut into h x w cells; a cell's value is the mean of the mask over the cell, with every pixel
    weighted by how much of it lies in the cell (separable: rows (h, H) @ mask @ columns (W, w)). Exact for
    any ratio, up or down; what lies outside the grid counts as empty; an empty window gives zeros.
    """
    import torch

    h, w = (size, size) if isinstance(size, int) else size
    windows = torch.as_tensor(windows, dtype=torch.float32, device=masks.device).reshape(-1, 4)

    def weights(lo, hi, cells: int, length: int):  # (n,) edges -> (n, cells, length) overlap shares
        step = (hi - lo) / cells
        start = lo[:, None] + step[:, None] * torch.arange(cells, device=lo.device)
        pixel = torch.arange(length, device=lo.device, dtype=torch.float32)
        overlap = torch.minimum(start[..., None] + step[:, None, None], pixel + 1) - torch.maximum(start[..., None],
                                                                                                  pixel)
        return overlap.clamp(min=0) / step.clamp(min=1e-12)[:, None, None]

    rows = weights(windows[:, 1], windows[:, 3], h, masks.shape[-2])
    columns = weights(windows[:, 0], windows[:, 2], w, masks.shape[-1])
    return rows @ masks.float() @ columns.transpose(1, 2)


def paint_instances(masks):
    """(k, H, W) bool masks -> (H, W) int32 map, mask j painted as j + 1, 0 where no mask.

    As if painted largest first: a pixel shows the smallest mask covering it, so a small mask over a large
    one (a wheel on a car) stays visible on top. Equal areas: the lower index (the better score) is on top.
    """
    import torch

    if len(masks) == 0:
        return torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    areas = masks.sum((1, 2))
    big = areas.max() + 1
    key = torch.where(masks, areas[:, None, None], big)  # (k, H, W): area where covered, else more than any
    top = key.argmin(0)  # argmin returns the first minimum: the lowest index among equal areas
    return torch.where(key.amin(0) < big, top + 1, 0).int()


def instance_edges(ids):
    """(H, W) instance map -> (H, W) bool: pixels with a 4-neighbour of another id (background is id 0)."""
    import torch

    edges = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    down = ids[1:] != ids[:-1]
    right = ids[:, 1:] != ids[:, :-1]
    edges[1:] |= down
    edges[:-1] |= down
    edges[:, 1:] |= right
    edges[:, :-1] |= right
    return edges

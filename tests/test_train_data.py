"""Training data: the synthetic SPIN/CLIFF dataset, the Multi-RoI dataset, augmentation, mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcli import geometry as G
from hmrcli.body import COCO17_NAMES, JOINT_NAMES, load_body_model
from hmrcli.train.data import (
    COCO17_TO_SPIN24,
    SMPL24_FLIP,
    SPIN24_BODY_CONF,
    SPIN24_FLIP,
    SPIN24_NAMES,
    AugmentConfig,
    AugmentParams,
    GlobalIndexSampler,
    MixedDataset,
    SpinDataset,
    collate,
    flip_pose,
    points_to_crop,
    spin24_from_body,
    transform_targets,
)
from hmrcli.train.synthetic import (
    SyntheticConfig,
    procedural_background,
    split_npz,
    write_synthetic_dataset,
)

WH = (320, 240)
CFG = SyntheticConfig(image_wh=WH, write_masks=True)
SPIN_KEYS = {"imgname": (), "center": (2,), "scale": (), "part": (24, 3), "S": (24, 4), "pose": (72,),
             "shape": (10,), "has_smpl": (), "focal_l": (), "global_t": (3,), "cam_t": (3,),
             "joints_smpl24": (24, 3), "img_wh": (2,)}
ONLY_FLIP = AugmentConfig(flip_prob=1.0, rot_prob=0.0, scale_factor=0.0, noise_factor=0.0)
ONLY_ROT = AugmentConfig(flip_prob=0.0, rot_prob=1.0, rot_factor=30.0, scale_factor=0.0, noise_factor=0.0)
FLIP_ROT = AugmentConfig(flip_prob=1.0, rot_prob=1.0, rot_factor=30.0, scale_factor=0.25, noise_factor=0.4)


@pytest.fixture(scope="module")
def body():
    return load_body_model("free")


@pytest.fixture(scope="module")
def synth(tmp_path_factory, body):
    root = tmp_path_factory.mktemp("synth")
    summary = write_synthetic_dataset(root, 6, seed=7, config=CFG, body=body)
    return root, summary


def _npz(synth) -> dict[str, np.ndarray]:
    root, summary = synth
    with np.load(summary["npz"]) as z:
        return {k: z[k] for k in z.files}


def _posed(body, pose, betas, cam_t):
    out = body(torch.as_tensor(np.asarray(pose, np.float64)).reshape(-1, 72),
               torch.as_tensor(np.asarray(betas, np.float64)).reshape(-1, 10))
    t = np.asarray(cam_t, np.float64).reshape(-1, 1, 3)
    return out.joints.numpy() + t, out.keypoints_coco.numpy() + t


# -- the generator ---------------------------------------------------------------------------------


def test_synthetic_npz_has_spin_keys_and_shapes(synth):
    root, summary = synth
    d = _npz(synth)
    n = summary["samples"]
    assert n == 6 and summary["images"] <= 6
    for k, shape in SPIN_KEYS.items():
        assert d[k].shape == (n, *shape), k
    assert str(d["betas_space"]) == "free"
    assert all((root / name).is_file() for name in d["imgname"])
    assert np.all(d["has_smpl"] == 1)
    np.testing.assert_allclose(d["focal_l"], np.hypot(*WH))
    np.testing.assert_array_equal(d["global_t"], d["cam_t"])
    assert (root / "synthetic.json").is_file()
    # box: center inside the image, scale = b / 200 with a sensible size
    assert np.all(d["scale"] * 200 > 40)
    assert np.all((d["center"] > 0) & (d["center"] < np.array(WH)))


def test_synthetic_labels_are_consistent(synth, body):
    """S = SPIN24 of body(pose, shape) + cam_t; part = S projected with K (conf > 0)."""
    d = _npz(synth)
    joints, kps = _posed(body, d["pose"], d["shape"], d["cam_t"])
    np.testing.assert_allclose(d["joints_smpl24"], joints, atol=1e-6)
    s24 = spin24_from_body(joints, kps)
    np.testing.assert_allclose(d["S"][..., :3], s24, atol=1e-6)
    np.testing.assert_array_equal(d["S"][..., 3], np.broadcast_to(SPIN24_BODY_CONF, (len(s24), 24)))
    K = G.intrinsics(d["focal_l"][0], *WH)
    uv = G.project(d["S"][..., :3] + (d["S"][..., 3:] == 0) * np.array([0, 0, 1.0]), K)
    ok = d["part"][..., 2] > 0
    assert ok.sum() > 0.8 * (SPIN24_BODY_CONF > 0).sum() * len(uv)
    np.testing.assert_allclose(d["part"][..., :2][ok], uv[ok], atol=1e-6)
    # the global orientation is in the camera frame: bodies are upright (head above pelvis, y down)
    assert np.all(joints[:, 15, 1] < joints[:, 0, 1])


def test_synthetic_is_deterministic(tmp_path, synth, body):
    write_synthetic_dataset(tmp_path, 6, seed=7, config=CFG, body=body)
    a = _npz(synth)
    with np.load(tmp_path / "synthetic.npz") as z:
        for k in a:
            np.testing.assert_array_equal(z[k], a[k], err_msg=k)
    root = synth[0]
    name = str(a["imgname"][0])
    assert (tmp_path / name).read_bytes() == (root / name).read_bytes()


def test_backgrounds_are_varied():
    rng = np.random.default_rng(0)
    imgs = [procedural_background(rng, (64, 48), kind) for kind in ("gradient", "noise", "stripes", "checker")]
    for img in imgs:
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert len({img.tobytes() for img in imgs}) == 4
    with pytest.raises(ValueError):
        procedural_background(rng, (8, 8), "plasma")


def test_split_by_image(synth, tmp_path):
    src = _npz(synth)
    path = tmp_path / "s.npz"
    np.savez(path, **src)
    out = split_npz(path, {"train": 0.5, "test": 0.5}, seed=1)
    parts = {k: np.load(p) for k, p in out.items()}
    assert len(parts["train"]["imgname"]) + len(parts["test"]["imgname"]) == len(src["imgname"])
    assert not set(parts["train"]["imgname"].tolist()) & set(parts["test"]["imgname"].tolist())
    assert str(parts["test"]["betas_space"]) == "free"


# -- joint layouts and flips -----------------------------------------------------------------------


def _swap(name: str) -> str:
    return name.replace("left", "#").replace("right", "left").replace("#", "right")


def test_flip_permutations_match_names():
    assert [SPIN24_NAMES[i] for i in SPIN24_FLIP] == [_swap(n) for n in SPIN24_NAMES]
    assert [JOINT_NAMES[i] for i in SMPL24_FLIP] == [_swap(n) for n in JOINT_NAMES]
    for k, s in enumerate(COCO17_TO_SPIN24):
        assert SPIN24_NAMES[s] == COCO17_NAMES[k]


def test_flip_pose_twice_is_identity():
    p = np.random.default_rng(0).normal(size=(3, 72))
    np.testing.assert_array_equal(flip_pose(flip_pose(p)), p)
    t = torch.as_tensor(p)
    torch.testing.assert_close(flip_pose(flip_pose(t)), t)
    torch.testing.assert_close(flip_pose(t), torch.as_tensor(flip_pose(p)))


def test_transform_targets_flip_twice_is_identity(synth):
    ds = SpinDataset(_path(synth))
    t = ds.targets(0)
    flip = AugmentParams(flip=True)
    back = transform_targets(transform_targets(t, flip, WH), flip, WH)
    for k in ("kp2d", "joints3d", "joints_smpl", "pose", "cam_t", "center"):
        np.testing.assert_allclose(getattr(back, k), getattr(t, k), atol=1e-9, err_msg=k)


# -- the dataset -----------------------------------------------------------------------------------


def _path(synth) -> str:
    return synth[1]["npz"]


def test_item_shapes_and_collate(synth):
    ds = SpinDataset(_path(synth), aspect="rect", num_rois=5)
    it = ds[0]
    shapes = {"img": (5, 3, 256, 192), "bbox_info": (5, 3), "rois": (5, 3), "affines": (5, 2, 3), "img_wh": (2,),
              "focal": (), "K": (3, 3), "kp2d_full": (24, 3), "kp2d_crop": (5, 24, 3), "joints3d": (24, 4),
              "joints_smpl24": (24, 4), "pose": (72,), "rotmats": (24, 3, 3), "betas": (10,), "cam_t": (3,),
              "has_smpl": (), "has_3d": (), "has_cam_t": (), "has_joints_smpl": (), "person_id": (),
              "image_id": (), "gender": ()}
    for k, s in shapes.items():
        assert tuple(it[k].shape) == s, k
    assert it["img"].dtype == torch.float32 and it["person_id"].dtype == torch.int64
    assert float(it["has_smpl"]) == float(it["has_3d"]) == float(it["has_cam_t"]) == 1.0
    np.testing.assert_allclose(it["bbox_info"].numpy(), G.bbox_info(it["rois"].numpy(), np.array(WH), np.hypot(*WH)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(it["rois"].numpy(), G.make_rois(it["rois"][0].numpy().astype(np.float64)), rtol=1e-6)
    torch.testing.assert_close(it["rotmats"], G.axis_angle_to_rotmat(it["pose"].reshape(24, 3)), atol=1e-5, rtol=0)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["img"].shape == (3, 5, 3, 256, 192) and batch["kp2d_crop"].shape == (3, 5, 24, 3)
    assert batch["has_smpl"].shape == (3,) and len(batch["imgname"]) == 3
    sq = SpinDataset(_path(synth), aspect="square", num_rois=2)[0]
    assert sq["img"].shape == (2, 3, 224, 224) and sq["kp2d_crop"].shape == (2, 24, 3)


def test_ids_for_contrastive_loss(synth):
    ds = SpinDataset(_path(synth))
    d = _npz(synth)
    ids = [(int(ds[i]["person_id"]), int(ds[i]["image_id"])) for i in range(len(ds))]
    assert len({p for p, _ in ids}) == len(ds)
    for i in range(len(ds)):
        for j in range(len(ds)):
            assert (ids[i][1] == ids[j][1]) == (d["imgname"][i] == d["imgname"][j])


def test_crop_of_roi0_contains_the_person(synth):
    import cv2

    root = synth[0]
    d = _npz(synth)
    for aspect in ("square", "rect"):
        ds = SpinDataset(_path(synth), aspect=aspect, normalize=False)
        h, w = ds.crop_hw
        for i in range(len(ds)):
            it = ds[i]
            mask = cv2.imread(str(root / d["maskname"][i]), cv2.IMREAD_UNCHANGED)
            ys, xs = np.nonzero(mask == d["mask_index"][i])
            assert len(xs) > 50
            xy = G.map_points(np.stack([xs, ys], 1).astype(np.float64), it["affines"][0].numpy().astype(np.float64))
            inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= h - 0.5)
            assert inside.mean() > (0.97 if aspect == "square" else 0.85), (aspect, i, inside.mean())
            # the crop is the OpenCV warp of the image with that affine
            img = ds.read_image(i)
            ref = G.crop_image_np(img, it["affines"][0].numpy().astype(np.float64), (h, w))
            diff = np.abs(it["img"][0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
            assert diff.max() <= 1  # the item's affine is stored in float32


@pytest.mark.parametrize("augment", [None, FLIP_ROT])
def test_kp2d_crop_is_kp2d_full_through_the_affines(synth, augment):
    ds = SpinDataset(_path(synth), augment=augment, seed=3)
    h, w = ds.crop_hw
    for i in range(len(ds)):
        it = ds[i]
        full, aff = it["kp2d_full"].double(), it["affines"].double()
        xy = G.map_points(full[None, :, :2], aff)  # (M, J, 2) crop pixels
        expect = torch.stack([2 * xy[..., 0] / w - 1, 2 * xy[..., 1] / h - 1], -1)
        torch.testing.assert_close(it["kp2d_crop"][..., :2].double(), expect, atol=1e-4, rtol=0)
        torch.testing.assert_close(points_to_crop(full[:, :2], aff, (h, w)), expect)
        assert torch.equal(it["kp2d_crop"][..., 2], full[:, 2].float().expand(len(aff), -1))
        # the person box centre is the crop centre of RoI 0 (normalised 0)
        c = points_to_crop(it["rois"][:1, :2].double(), aff[:1], (h, w))
        torch.testing.assert_close(c, torch.zeros_like(c), atol=1e-4, rtol=0)


def _check_camera_consistency(it, body, atol_px=0.05, atol_m=1e-4):
    """Re-pose the body from the item's pose/betas/cam_t: 3D joints and K-projection match."""
    joints, kps = _posed(body, it["pose"].double().numpy(), it["betas"].double().numpy(), it["cam_t"].double().numpy())
    s24 = spin24_from_body(joints, kps)[0]
    conf3 = it["joints3d"][:, 3].numpy() > 0
    np.testing.assert_allclose(it["joints3d"][:, :3].numpy()[conf3], s24[conf3], atol=atol_m)
    np.testing.assert_allclose(it["joints_smpl24"][:, :3].numpy(), joints[0], atol=atol_m)
    conf2 = it["kp2d_full"][:, 2].numpy() > 0
    uv = G.project(s24[conf2], it["K"].double().numpy())
    np.testing.assert_allclose(it["kp2d_full"][:, :2].numpy()[conf2], uv, atol=atol_px)


def test_unaugmented_items_are_camera_consistent(synth, body):
    ds = SpinDataset(_path(synth))
    for i in range(len(ds)):
        _check_camera_consistency(ds[i], body)


def test_flipped_sample_is_the_mirror_image(synth, body):
    plain = SpinDataset(_path(synth))
    flipped = SpinDataset(_path(synth), augment=ONLY_FLIP, seed=0)
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        assert float(b["aug_flip"]) == 1.0 and float(b["aug_rot"]) == 0.0
        # re-posing the flipped pose gives the mirrored joints: left/right swapped, x negated
        joints, _ = _posed(body, b["pose"].double().numpy(), b["betas"].double().numpy(), b["cam_t"].double().numpy())
        mirrored = a["joints_smpl24"][:, :3].double().numpy()[list(SMPL24_FLIP)] * np.array([-1.0, 1.0, 1.0])
        np.testing.assert_allclose(joints[0], mirrored, atol=1e-3)  # the free model is symmetric to 0.2 mm
        # 2D: u -> W - u about the principal point, joints permuted
        kp = a["kp2d_full"].double().numpy()[list(SPIN24_FLIP)]
        np.testing.assert_allclose(b["kp2d_full"][:, 0].numpy(), WH[0] - kp[:, 0], atol=1e-3)
        np.testing.assert_allclose(b["kp2d_full"][:, 1].numpy(), kp[:, 1], atol=1e-3)
        np.testing.assert_allclose(b["rois"][0, 0].item(), WH[0] - a["rois"][0, 0].item(), atol=1e-3)
        _check_camera_consistency(b, body, atol_px=0.1, atol_m=1e-3)
        # the crops are mirrored content: RoI 0's crop is the horizontal mirror of the unflipped one,
        # up to the half-pixel offset of the crop centre convention (compare interiors loosely)
        ca = a["img"][0].numpy()[..., 2:-2]
        cb = b["img"][0].numpy()[..., ::-1][..., 2:-2]
        assert np.abs(ca - cb).mean() < 0.25 * np.abs(ca - ca.mean()).mean()


@pytest.mark.parametrize("augment", [ONLY_ROT, FLIP_ROT])
def test_rotation_keeps_2d_3d_camera_consistent(synth, body, augment):
    ds = SpinDataset(_path(synth), augment=augment, seed=5)
    rotated = 0
    for key in range(2 * len(ds)):
        it = ds[key]
        rotated += float(it["aug_rot"]) != 0.0
        assert float(it["has_cam_t"]) == 1.0
        _check_camera_consistency(it, body, atol_px=0.1, atol_m=1e-3)
        # the K of the augmented image is the original one
        torch.testing.assert_close(it["K"], torch.as_tensor(G.intrinsics(np.hypot(*WH), *WH), dtype=torch.float32))
    assert rotated == 2 * len(ds)


def test_augmentation_is_seeded(synth):
    a = SpinDataset(_path(synth), augment=FLIP_ROT, seed=1)
    b = SpinDataset(_path(synth), augment=FLIP_ROT, seed=1)
    c = SpinDataset(_path(synth), augment=FLIP_ROT, seed=2)
    assert torch.equal(a[3]["img"], b[3]["img"]) and torch.equal(a[3]["kp2d_crop"], b[3]["kp2d_crop"])
    assert not torch.equal(a[3]["img"], c[3]["img"])
    assert not torch.equal(a[3]["img"], a[3 + len(a)]["img"])  # the next epoch draws anew
    a.set_epoch(1)
    assert torch.equal(a[3]["img"], b[3 + len(b)]["img"])


# -- plain SPIN files ------------------------------------------------------------------------------


def test_reads_spin_npz_without_cliff_extras(synth, tmp_path, body):
    root = synth[0]
    d = _npz(synth)
    keep = ("imgname", "center", "scale", "part", "S", "pose", "shape", "has_smpl")
    plain = tmp_path / "plain.npz"
    np.savez(plain, **{k: d[k] for k in keep})
    ds = SpinDataset(plain, image_root=root)
    assert ds.betas_space == "smpl"
    it = ds[0]
    assert float(it["has_cam_t"]) == 0.0 and float(it["has_joints_smpl"]) == 0.0
    assert float(it["has_smpl"]) == 1.0 and float(it["has_3d"]) == 1.0
    np.testing.assert_allclose(float(it["focal"]), np.hypot(*WH), rtol=1e-6)
    torch.testing.assert_close(it["kp2d_full"], torch.as_tensor(d["part"][0], dtype=torch.float32))
    aug = SpinDataset(plain, image_root=root, augment=FLIP_ROT, seed=0)[1]  # works without cam_t
    assert float(aug["has_cam_t"]) == 0.0 and torch.isfinite(aug["img"]).all()
    # the bare minimum: boxes only
    bare = tmp_path / "bare.npz"
    np.savez(bare, imgname=d["imgname"], center=d["center"], scale=d["scale"])
    it = SpinDataset(bare, image_root=root, augment=FLIP_ROT)[0]
    assert float(it["has_smpl"]) == float(it["has_3d"]) == 0.0
    assert float(it["kp2d_full"][:, 2].abs().sum()) == 0.0
    # CLIFF's key names and SPIN's 16-beta files
    cliff = tmp_path / "cliff.npz"
    np.savez(cliff, **{k: d[k] for k in keep if k != "shape"}, shape=np.pad(d["shape"], ((0, 0), (0, 6))),
             focal_length=d["focal_l"] * 2, global_t=d["cam_t"])
    it = SpinDataset(cliff, image_root=root)[0]
    assert float(it["has_cam_t"]) == 1.0 and it["betas"].shape == (10,)
    np.testing.assert_allclose(float(it["focal"]), 2 * np.hypot(*WH), rtol=1e-6)


def test_pickled_npz_is_refused(tmp_path):
    from hmrcli.bench.datasets import DatasetError

    p = tmp_path / "bad.npz"
    np.savez(p, imgname=np.array(["a.jpg"], dtype=object), center=np.zeros((1, 2)), scale=np.ones(1))
    with pytest.raises(DatasetError, match="pickled"):
        SpinDataset(p)


# -- mixing ----------------------------------------------------------------------------------------


def _two(synth, tmp_path):
    d = _npz(synth)
    b = tmp_path / "second.npz"
    np.savez(b, **{k: (v[:4] if v.ndim else v) for k, v in d.items()})
    return SpinDataset(_path(synth), augment=FLIP_ROT), SpinDataset(b, image_root=synth[0], augment=FLIP_ROT)


def test_mixed_dataset_ratios_and_determinism(synth, tmp_path):
    a, b = _two(synth, tmp_path)
    mix = MixedDataset([a, b], ratios=[3, 1], seed=11, epoch_length=40)
    assert len(mix) == 40
    locs = [mix.locate(g) for g in range(400)]
    for e in range(10):
        ks = [k for k, _ in locs[40 * e:40 * (e + 1)]]
        assert ks.count(0) == 30 and ks.count(1) == 10
    # every row once per round of each dataset
    rows_b = [r for k, r in locs if k == 1]
    assert sorted(rows_b[:4]) == [0, 1, 2, 3] and sorted(rows_b[4:8]) == [0, 1, 2, 3]
    rows_a = [r for k, r in locs if k == 0]
    assert sorted(rows_a[:6]) == list(range(6))
    again = MixedDataset([a, b], ratios=[3, 1], seed=11, epoch_length=40)
    assert [again.locate(g) for g in range(400)] == locs
    other = MixedDataset([a, b], ratios=[3, 1], seed=12, epoch_length=40)
    assert [other.locate(g) for g in range(400)] != locs
    # resuming at global index k (a fresh object, started later) gives the same items
    fresh = MixedDataset([a, b], ratios=[3, 1], seed=11, epoch_length=40)
    for g in (57, 58, 123):
        x, y = mix[g], fresh[g]
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["kp2d_crop"], y["kp2d_crop"])
        assert int(x["person_id"]) == int(y["person_id"])
    # ids are unique across datasets; dataset index is reported
    k, r = mix.locate(0)
    it = mix[0]
    assert int(it["dataset"]) == k and int(it["index"]) == r
    assert int(it["person_id"]) == (0 if k == 0 else len(a)) + r
    assert MixedDataset([a, b], seed=0).counts.tolist() == [6, 4]  # default: proportional to lengths


def test_global_index_sampler_resumes_to_the_same_batches(synth, tmp_path):
    from torch.utils.data import DataLoader

    a, b = _two(synth, tmp_path)
    mix = MixedDataset([a, b], ratios=[1, 1], seed=0, epoch_length=8)
    bs = 3
    full = DataLoader(mix, batch_size=bs, sampler=GlobalIndexSampler(0, 4 * bs), collate_fn=collate)
    batches = [(x["dataset"].tolist(), x["index"].tolist(), x["aug_rot"].tolist()) for x in full]
    resumed = DataLoader(mix, batch_size=bs, sampler=GlobalIndexSampler(2 * bs, 4 * bs), collate_fn=collate)
    assert [(x["dataset"].tolist(), x["index"].tolist(), x["aug_rot"].tolist()) for x in resumed] == batches[2:]
    assert len(GlobalIndexSampler(5, 9)) == 4


def test_mixed_dataset_refuses_mixed_shape_spaces(synth, tmp_path):
    d = _npz(synth)
    p = tmp_path / "smpl.npz"
    np.savez(p, **{k: v for k, v in d.items() if k != "betas_space"})
    a, b = SpinDataset(_path(synth)), SpinDataset(p, image_root=synth[0])
    with pytest.raises(ValueError, match="shape spaces"):
        MixedDataset([a, b])
    assert len(MixedDataset([a, b], allow_mixed_betas=True)) == 2 * len(a)

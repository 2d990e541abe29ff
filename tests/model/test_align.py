"""Detection, alignment to the template, and paste-back, on real public-domain photos."""

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from model.align import FaceAligner, downscaled, paste_back, scaled
from model.framing import CANONICAL_LANDMARKS


def to_uint8(crop: torch.Tensor) -> np.ndarray:
    return (crop.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def template_in_pixels(side: int) -> np.ndarray:
    return CANONICAL_LANDMARKS * side - 0.5


def mapped(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.fixture(scope="module")
def astronaut(photo, aligner):
    image = photo("skimage_astronaut.png")
    (face,) = aligner.detect(image)
    return image, aligner.align(image, face, (64, 256))


def test_aligned_crop_shows_each_landmark_where_the_alignment_maps_it(astronaut, aligner):
    image, aligned = astronaut
    (redetected,) = aligner.detect(to_uint8(aligned.crops[256]))
    expected = mapped(aligned.face.landmarks, scaled(aligned.matrix, 256))
    assert np.abs(redetected.landmarks - expected).max() < 2.5


def test_aligned_crop_centres_the_landmarks_on_the_template_centre(astronaut, aligner):
    _, aligned = astronaut
    (redetected,) = aligner.detect(to_uint8(aligned.crops[256]))
    offset = redetected.landmarks.mean(0) - template_in_pixels(256).mean(0)
    assert np.hypot(*offset) < 2.0


def test_aligned_astronaut_has_its_eyes_at_the_template_positions(astronaut, aligner):
    _, aligned = astronaut
    (redetected,) = aligner.detect(to_uint8(aligned.crops[256]))
    eye_errors = np.hypot(*(redetected.landmarks[:2] - template_in_pixels(256)[:2]).T)
    assert eye_errors.max() < 0.025 * 256


def test_paste_back_with_zero_change_returns_the_original_photo(astronaut):
    image, aligned = astronaut
    assert np.array_equal(paste_back(image, aligned, torch.zeros(3, 256, 256)), image)


def test_paste_back_alters_only_pixels_inside_the_face_region(astronaut):
    image, aligned = astronaut
    out = paste_back(image, aligned, torch.full((3, 256, 256), 0.3))
    changed = np.abs(out.astype(int) - image.astype(int)).max(2) > 0
    ys, xs = np.nonzero(changed)
    crop_positions = mapped(np.stack([xs, ys], 1).astype(np.float64), aligned.matrix)
    assert changed.sum() > 0.5 * aligned.face.size**2
    assert np.all((crop_positions > 0) & (crop_positions < 1))
    x1, y1, x2, y2 = aligned.face.box
    margin = aligned.face.size
    far = np.ones_like(changed)
    far[int(max(0, y1 - margin)) : int(y2 + margin), int(max(0, x1 - margin)) : int(x2 + margin)] = False
    assert not changed[far].any()


def test_two_person_photo_yields_two_faces_largest_first(photo, aligner):
    faces = aligner.detect(photo("frrepo_two_people.jpg"))
    assert len(faces) == 2
    assert faces[0].size >= faces[1].size
    assert abs(faces[0].box[0] - faces[1].box[0]) > faces[0].size


def test_photo_without_a_face_yields_none(photo, aligner):
    assert aligner.detect(photo("skimage_coffee_noface.png")) == []


def test_tiny_photo_yields_no_face_instead_of_failing(aligner):
    for side in (8, 12, 16):
        assert aligner.detect(np.full((side, side + 5, 3), 128, np.uint8)) == []


def test_rgba_photo_yields_its_main_face(photo, aligner):
    image = photo("fr_32bit_rgba.png")
    faces = aligner.detect(image)
    assert faces and faces[0].size > 0.25 * min(image.shape[:2])
    assert aligner.align(image, faces[0], (64,)).crops[64].shape == (3, 64, 64)


def test_grayscale_photo_gives_the_landmarks_of_the_colour_photo(astronaut, aligner):
    image, aligned = astronaut
    gray = np.asarray(Image.fromarray(image).convert("L").convert("RGB"))
    (face,) = aligner.detect(gray)
    assert np.abs(face.landmarks - aligned.face.landmarks).max() < 3.0


def test_grayscale_camera_photo_yields_its_face(photo, aligner):
    faces = aligner.detect(photo("skimage_camera.png"))
    assert len(faces) == 1 and not aligner.is_too_small(faces[0])


def test_rotated_photo_gives_the_same_aligned_crop(astronaut, aligner):
    image, aligned = astronaut
    rotated = np.asarray(Image.fromarray(image).rotate(20, resample=Image.BICUBIC, expand=True))
    (face,) = aligner.detect(rotated)
    crop = aligner.align(rotated, face, (64,)).crops[64]
    assert (crop - aligned.crops[64]).abs().mean().item() < 0.03


def test_aligned_crops_of_different_people_differ(astronaut, photo, aligner):
    _, aligned = astronaut
    obama = photo("fr_obama.jpg")
    other = aligner.align(obama, aligner.detect(obama)[0], (64,)).crops[64]
    assert (other - aligned.crops[64]).abs().mean().item() > 0.1


def test_detection_on_a_large_photo_maps_faces_back_to_full_resolution(astronaut, aligner):
    image, aligned = astronaut
    scale = 5
    large = np.asarray(Image.fromarray(image).resize((512 * scale, 512 * scale), Image.BICUBIC))
    (face,) = aligner.detect(large)
    assert np.abs(face.landmarks - aligned.face.landmarks * scale).max() < 3 * scale
    assert face.size == pytest.approx(aligned.face.size * scale, rel=0.1)


def test_smallest_face_is_measured_in_photo_pixels_on_a_large_photo(astronaut, aligner):
    image, _ = astronaut
    large = np.asarray(Image.fromarray(image).resize((2560, 2560), Image.BICUBIC))
    assert len(aligner.detect(large, smallest=0.25 * 2560)) == 1
    assert aligner.detect(large, smallest=0.9 * 2560) == []


@pytest.fixture(scope="module")
def six_small_faces_on_a_large_photo(photo) -> np.ndarray:
    """Six faces of about 100 px on a 6000 x 4500 photo: 11 px on the 640 px copy detection first uses."""
    face = Image.fromarray(photo("frrepo_obama_small.jpg")).resize((212, 159), Image.LANCZOS)  # face ~100 px
    canvas = Image.new("RGB", (6000, 4500), (120, 125, 130))
    for index in range(6):
        canvas.paste(face, (600 + 1700 * (index % 3), 1200 + 1800 * (index // 3)))
    return np.asarray(canvas)


def test_a_second_larger_pass_finds_the_faces_the_shrunk_copy_misses(six_small_faces_on_a_large_photo):
    first_pass_only = FaceAligner(second_pass_side=0)
    assert len(first_pass_only.detect(six_small_faces_on_a_large_photo)) < 6
    faces = FaceAligner(second_pass_side=1600).detect(six_small_faces_on_a_large_photo)
    assert len(faces) == 6 and all(80 < f.size < 130 for f in faces)


def test_detector_weights_load_without_network(photo, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    faces = FaceAligner().detect(photo("fr_obama.jpg"))
    assert len(faces) == 1


def test_torch_torchvision_and_facenet_pytorch_work_together():
    import facenet_pytorch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert hasattr(facenet_pytorch, "MTCNN")


@pytest.mark.parametrize("shape", [(1152, 864), (700, 2000), (641, 640)])
def test_the_copy_detection_runs_on_is_the_photos_bilinear_shrink(shape):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(small).resize(shape[::-1], Image.BICUBIC))  # smooth, with some texture
    photo = np.ascontiguousarray(
        np.clip(photo.astype(int) + rng.integers(-20, 21, photo.shape), 0, 255).astype(np.uint8)
    )
    copy, factor = downscaled(photo, 640)
    assert max(copy.shape[:2]) == 640 and factor == 640 / max(shape)
    assert copy.dtype == np.uint8 and copy.flags["C_CONTIGUOUS"]
    expected = np.asarray(Image.fromarray(photo).resize(copy.shape[1::-1], Image.BILINEAR)).astype(int)
    difference = np.abs(copy.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    same, one = downscaled(photo[:600, :600], 640)
    assert one == 1.0 and same is not None and np.array_equal(same, photo[:600, :600])

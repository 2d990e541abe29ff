"""model.detect finds what facenet-pytorch's own `detect_face` finds, on real photos, at the sizes detection
runs on; and it answers the images facenet cannot handle."""

import numpy as np
import pytest
import torch
from facenet_pytorch.models.utils.detect_face import detect_face
from torch.nn.functional import interpolate

from model.align import DETECTOR_SMALLEST, downscaled
from model.detect import AreaSampler, mtcnn_detect

FACE_PHOTOS = [
    "fr_32bit_rgba.png",
    "fr_obama.jpg",
    "frrepo_obama_small.jpg",
    "frrepo_two_people.jpg",
    "skimage_astronaut.png",
    "skimage_camera.png",  # grayscale
]
DETECTION_SIDES = [640, 1600]  # the first pass's copy and the second, larger pass's


def facenet_faces(mtcnn, image: np.ndarray, min_face_size: float):
    """facenet's `detect_face` on one image: boxes, scores and landmarks, largest box first as MTCNN.detect
    orders them."""
    with torch.inference_mode():
        boxes, points = detect_face(
            image, min_face_size, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.thresholds, mtcnn.factor, mtcnn.device
        )
    boxes, points = np.asarray(boxes[0], np.float64).reshape(-1, 5), np.asarray(points[0], np.float64)
    order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
    return boxes[order, :4], boxes[order, 4], points[order]


def ours(mtcnn, image: np.ndarray, min_face_size: float = DETECTOR_SMALLEST):
    with torch.inference_mode():
        return mtcnn_detect(mtcnn, image, min_face_size)


@pytest.mark.parametrize("side", DETECTION_SIDES)
@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_faces_boxes_landmarks_and_scores_match_facenets_detect_face(photo, aligner, name, side):
    image, _ = downscaled(photo(name), side)
    expected = facenet_faces(aligner.mtcnn, image, DETECTOR_SMALLEST)
    boxes, scores, landmarks = ours(aligner.mtcnn, image)
    assert len(expected[0]) > 0
    assert len(boxes) == len(expected[0])
    assert np.abs(boxes - expected[0]).max() < 1.5
    assert np.abs(scores - expected[1]).max() < 0.01
    assert np.abs(landmarks - expected[2]).max() < 1.5


def test_faces_come_largest_box_first(photo, aligner):
    boxes, _, _ = ours(aligner.mtcnn, photo("frrepo_two_people.jpg"))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert len(boxes) == 2 and areas[0] >= areas[1]


def test_a_larger_smallest_face_matches_facenet_too(photo, aligner):
    image = photo("fr_obama.jpg")
    expected = facenet_faces(aligner.mtcnn, image, 80.0)
    boxes, scores, landmarks = ours(aligner.mtcnn, image, 80.0)
    assert len(boxes) == len(expected[0]) > 0
    assert np.abs(boxes - expected[0]).max() < 1.5 and np.abs(landmarks - expected[2]).max() < 1.5


def test_a_photo_without_a_face_gives_empty_results_like_facenet(photo, aligner):
    image = photo("skimage_coffee_noface.png")
    boxes, scores, landmarks = ours(aligner.mtcnn, image)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and landmarks.shape == (0, 5, 2)
    assert len(facenet_faces(aligner.mtcnn, image, DETECTOR_SMALLEST)[0]) == 0
    assert aligner.detect(image) == []


def test_a_photo_smaller_than_the_detectors_window_finds_nothing(photo, aligner):
    tiny = np.ascontiguousarray(photo("skimage_astronaut.png")[::48, ::48][:11, :10])
    assert tiny.shape[:2] == (11, 10)
    boxes, scores, landmarks = ours(aligner.mtcnn, tiny)
    assert len(boxes) == len(scores) == len(landmarks) == 0
    assert aligner.detect(tiny) == []


def test_a_smallest_face_larger_than_the_photo_finds_nothing_instead_of_failing(photo, aligner):
    boxes, _, _ = ours(aligner.mtcnn, photo("frrepo_obama_small.jpg"), 500.0)
    assert len(boxes) == 0


def test_a_grayscale_photo_is_found_through_the_aligner_as_facenet_finds_it(photo, aligner):
    image = photo("skimage_camera.png")
    assert np.array_equal(image[..., 0], image[..., 2])
    (face,) = aligner.detect(image)
    expected = facenet_faces(aligner.mtcnn, image, DETECTOR_SMALLEST)
    assert np.abs(face.box - expected[0][0]).max() < 1.5
    assert np.abs(face.landmarks - expected[2][0]).max() < 1.5


def test_area_resampling_from_the_integral_image_equals_interpolate_area(photo):
    image = photo("frrepo_two_people.jpg")
    sampler = AreaSampler(image)
    pixels = torch.from_numpy(image.copy())[None].permute(0, 3, 1, 2).float()
    h, w = image.shape[:2]
    for rows, cols in [(397, 676), (100, 171), (13, 22), (h, w), (h + 5, w + 7)]:
        assert torch.equal(sampler.resized(rows, cols), interpolate(pixels, size=(rows, cols), mode="area"))
    # regions larger and smaller than the crop, at the photo's edges too
    regions = np.array([[0, 0, 661, 1126], [10, 20, 30, 40], [640, 1100, 21, 26], [300, 400, 7, 5]])
    for side in (24, 48):
        crops = sampler.regions(*regions.T, side)
        for crop, (top, left, rows, cols) in zip(crops, regions):
            region = pixels[:, :, top : top + rows, left : left + cols]
            assert torch.equal(crop, interpolate(region, size=(side, side), mode="area")[0])


def test_the_pyramid_is_split_into_two_halves_of_about_equal_pixels():
    from model.detect import _halves, _pyramid_scales

    scales = _pyramid_scales(480, 640, 20.0, 0.709)
    here, there = _halves(scales)
    assert sorted(here + there) == list(range(len(scales)))
    loads = [sum(scales[i] ** 2 for i in group) for group in (here, there)]
    assert abs(loads[0] - loads[1]) <= scales[0] ** 2 / 2  # within half the largest level
    assert _halves([]) == ([], []) and _halves([0.5]) == ([0], [])


def test_a_side_job_runs_on_another_thread_in_inference_mode():
    import threading

    from model.side_threads import beside

    def job(x):
        return threading.current_thread(), torch.is_inference_mode_enabled(), (x * 2).requires_grad

    thread, inference, grad = beside(job, torch.ones(2, requires_grad=True)).result()
    assert thread is not threading.current_thread() and inference and not grad


def _side_job_in_child() -> int:
    from model.side_threads import beside

    return beside(lambda: 7).result(timeout=20)


def test_a_forked_child_runs_side_jobs_on_threads_of_its_own(photo, aligner):
    """The data preparation forks workers after the parent has detected faces: their side jobs must run."""
    import multiprocessing as mp

    from model.side_threads import beside

    assert beside(lambda: 1).result() == 1  # the parent's pool exists
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_side_job_in_child).get(timeout=60) == 7

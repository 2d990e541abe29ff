"""Ageing photos: one age (/v1/age) or several in a strip (/v1/age/series), with what was done in `X-` headers."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Form, Request, Response

from app.dependencies import EditorDep, ServiceDep
from app.imaging import encode_image, grid, labelled_strip
from app.openapi import error_responses, image_responses
from app.routers import v1_router
from app.routers.media import MULTIPART, decode_upload, describe, image_file, wants_json
from app.schemas import (
    AgedFace,
    AgeForm,
    AgeResponse,
    SeriesFace,
    SeriesForm,
    SeriesResponse,
    SeriesStep,
    SkippedFace,
)
from model.edit_rules import check_target_ages
from model.editor import SKIP_REASONS, FaceResult, PhotoResult

router = v1_router()


def aligned_faces(faces: list[FaceResult]) -> list[np.ndarray]:
    """Each edited face with the flow's framing, at the editor's work resolution."""
    return [face.work_after for face in faces if face.work_after is not None]


def skipped_faces(result: PhotoResult) -> list[SkippedFace]:
    return [SkippedFace.of(f.face, reason=f.reason, explanation=SKIP_REASONS[f.reason]) for f in result.skipped]


def count_headers(result: PhotoResult) -> dict[str, str]:
    """How many faces were found, edited and skipped, and why each skipped one was (largest first)."""
    return {
        "X-Faces": str(len(result.faces)),
        "X-Faces-Found": str(result.found),
        "X-Faces-Skipped": str(len(result.skipped)),
        "X-Faces-Skipped-Reasons": ",".join(f.reason for f in result.skipped),
    }


def years_list(values) -> str:
    return ",".join(f"{v:.1f}" for v in values)


COUNT_HEADERS = {
    "X-Faces": "Number of faces edited.",
    "X-Faces-Found": "Number of faces found, edited or not.",
    "X-Faces-Skipped": "Number of faces found and not edited.",
    "X-Faces-Skipped-Reasons": "Why each face was not edited, comma separated, largest face first: "
    + "; ".join(f"`{k}` {v}" for k, v in SKIP_REASONS.items())
    + ".",
}
AGE_HEADERS = {
    **COUNT_HEADERS,
    "X-Ages-Before": "Estimated age of each face, years, comma separated, largest face first.",
    "X-Ages-After": "Age each face was taken to, years, comma separated.",
    "X-Age-Shift": "Years added to each face (negative: younger), comma separated.",
    "X-Edit-Strengths": "Share of each face's asked change applied, comma separated: below 1 where the "
    "likelihood guard scaled the edit back.",
}


@router.post(
    "/age",
    name="age_photo",
    summary="Age the faces in a photo",
    tags=["editing"],
    response_model=AgeResponse,
    responses={
        **image_responses("The photo (or aligned faces) with every chosen face aged.", AGE_HEADERS),
        **error_responses(400, 413, 415, 422, 503),
    },
)
def age_photo(
    request: Request, form: Annotated[AgeForm, Form(media_type=MULTIPART)], service: ServiceDep, editor: EditorDep
) -> Response | AgeResponse:
    """Give `years` to add (or subtract) years, or `target_age` to take every face to one age."""
    if form.target_age is not None:
        check_target_ages([form.target_age], editor.age_range)
    with service.gate.slot():
        decoded = decode_upload(service, form)
        result = editor.age_photo(
            decoded.rgb,
            years=form.years,
            target_age=form.target_age,
            faces=form.faces,
            limits=service.settings.edit_limits(),
            photo_pixels=None if form.output == "photo" else 0,
        )
        if form.output == "photo":
            assert result.image is not None  # a photo answer has every face pasted back into it
            image, alpha = result.image, decoded.alpha
        else:
            image, alpha = grid(aligned_faces(result.faces), len(result.faces)), None
        encoded = encode_image(image, form.format, alpha, decoded.icc_profile)
    service.metrics.faces.labels("age").inc(len(result.faces))
    service.metrics.observe_timings(result.timings)
    if wants_json(request):
        faces = [
            AgedFace.of(
                f.face,
                age_before=f.age_before,
                age_after=f.age_after,
                shift=f.shift,
                age_target=f.age_target,
                clamped=f.clamped,
                strength=f.strength,
            )
            for f in result.faces
        ]
        return AgeResponse(
            faces=faces,
            faces_found=result.found,
            skipped=skipped_faces(result),
            image=describe(encoded, image, form.format),
        )
    return image_file(
        encoded,
        form.format,
        {
            **count_headers(result),
            "X-Ages-Before": years_list(f.age_before for f in result.faces),
            "X-Ages-After": years_list(f.age_after for f in result.faces),
            "X-Age-Shift": years_list(f.shift for f in result.faces),
            "X-Edit-Strengths": ",".join(f"{f.strength:.2f}" for f in result.faces),
        },
    )


SERIES_HEADERS = {
    **COUNT_HEADERS,
    "X-Ages-Before": "Estimated age of each face, years, comma separated, largest face first.",
    "X-Target-Ages": "The target ages, left to right, comma separated.",
}


@router.post(
    "/age/series",
    name="age_photo_series",
    summary="One photo at several ages",
    tags=["editing"],
    response_model=SeriesResponse,
    responses={
        **image_responses(
            "One strip, left to right by age: the aligned faces (a row per face) or the whole photos.", SERIES_HEADERS
        ),
        **error_responses(400, 413, 415, 422, 503),
    },
)
def age_photo_series(
    request: Request, form: Annotated[SeriesForm, Form(media_type=MULTIPART)], service: ServiceDep, editor: EditorDep
) -> Response | SeriesResponse:
    """Detection and encoding are shared between the ages, so this is cheaper than one call per age.
    Photo strips are scaled down to stay within the pixel limit."""
    target_ages = form.target_ages
    check_target_ages(target_ages, editor.age_range)
    as_json = wants_json(request)
    with service.gate.slot():
        decoded = decode_upload(service, form)
        # photo strips are made at their final size, so a series holds about one photo's pixels in all
        photo_pixels = 0 if form.output == "face" else service.settings.max_pixels // len(target_ages)
        results = editor.age_photo_series(
            decoded.rgb, target_ages, faces=form.faces, limits=service.settings.edit_limits(), photo_pixels=photo_pixels
        )
        icc_profile = decoded.icc_profile
        del decoded  # the frames are made: the full-size photo is no longer needed
        if form.output == "face":
            frames = [grid(aligned_faces(r.faces), 1) for r in results]
        else:
            frames = [r.image for r in results if r.image is not None]
        pictures = frames if as_json else [labelled_strip(frames, [f"age {age:g}" for age in target_ages])]
        encoded = [encode_image(picture, form.format, icc_profile=icc_profile) for picture in pictures]
    faces = results[0].faces
    service.metrics.faces.labels("age_series").inc(len(faces) * len(results))
    service.metrics.observe_timings(results[-1].timings)
    if as_json:
        steps = [
            SeriesStep(
                target_age=age,
                ages_after=[f.age_after for f in r.faces],
                image=describe(file_bytes, frame, form.format),
            )
            for age, r, frame, file_bytes in zip(target_ages, results, frames, encoded)
        ]
        return SeriesResponse(
            faces=[SeriesFace.of(f.face, age_before=f.age_before) for f in faces],
            faces_found=results[0].found,
            skipped=skipped_faces(results[0]),
            steps=steps,
        )
    return image_file(
        encoded[0],
        form.format,
        {
            **count_headers(results[0]),
            "X-Ages-Before": years_list(f.age_before for f in faces),
            "X-Target-Ages": years_list(target_ages),
        },
    )

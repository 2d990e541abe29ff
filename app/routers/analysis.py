"""What the model finds in a photo (faces with their ages, how typical each face is) and faces it makes up."""

from __future__ import annotations

import secrets
from typing import Annotated

import numpy as np
from fastapi import Form, Query, Request, Response

from app.dependencies import EditorDep, ServiceDep
from app.imaging import encode_image, grid, tensor_to_image
from app.openapi import error_responses, image_responses
from app.routers import v1_router
from app.routers.media import MULTIPART, decode_upload, describe, image_file, wants_json
from app.schemas import (
    DetectedFace,
    FacesResponse,
    FormatChoice,
    LikelihoodFace,
    LikelihoodResponse,
    PhotoForm,
    SamplesResponse,
    Typicality,
)
from model.align import stack_crops
from model.editor import AgeEditor

MAX_SAMPLES = 64

router = v1_router()


@router.post(
    "/faces",
    name="detect_faces",
    summary="Find faces and estimate their ages",
    tags=["analysis"],
    response_model=FacesResponse,
    responses=error_responses(400, 413, 415, 422, 503),
)
def detect_faces(
    form: Annotated[PhotoForm, Form(media_type=MULTIPART)], service: ServiceDep, editor: EditorDep
) -> FacesResponse:
    """Every face found, largest first, including those too small to edit (flagged, without an age)."""
    with service.gate.slot():
        decoded = decode_upload(service, form)
        detected = editor.aligner.detect(decoded.rgb)[: 1 if form.faces == "largest" else None]
        usable = [f for f in detected if not editor.aligner.is_too_small(f)]
        ages = []
        if usable:
            crops = stack_crops(editor.align(decoded.rgb, usable), editor.resolution)
            ages = editor.estimate_age(crops).tolist()
    service.metrics.faces.labels("faces").inc(len(detected))
    age_of = {id(f): age for f, age in zip(usable, ages)}
    height, width = decoded.rgb.shape[:2]
    return FacesResponse(
        width=width,
        height=height,
        min_face_size=editor.aligner.min_face_size,
        faces=[DetectedFace.of(f, age=age_of.get(id(f)), too_small=editor.aligner.is_too_small(f)) for f in detected],
    )


def heldout_bits_per_dim(editor: AgeEditor) -> float | None:
    value = editor.info().get("heldout_bits_per_dim")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def typicality(bits_per_dim: float, heldout: float | None) -> tuple[float | None, Typicality | None]:
    """The difference from the held-out mean and a plain-language label for it."""
    if heldout is None:
        return None, None
    excess = (bits_per_dim - heldout) / heldout
    return bits_per_dim - heldout, "typical" if excess <= 0.05 else "unusual" if excess <= 0.15 else "very unusual"


@router.post(
    "/likelihood",
    name="face_likelihood",
    summary="How typical a face the model finds each face",
    tags=["analysis"],
    response_model=LikelihoodResponse,
    responses=error_responses(400, 413, 415, 422, 503),
)
def face_likelihood(
    form: Annotated[PhotoForm, Form(media_type=MULTIPART)], service: ServiceDep, editor: EditorDep
) -> LikelihoodResponse:
    """Bits per dimension of each aligned face under the flow, compared with held-out training faces."""
    with service.gate.slot():
        decoded = decode_upload(service, form)
        detected = editor.find_faces(decoded.rgb, form.faces)
        crops = stack_crops(editor.align(decoded.rgb, detected), editor.resolution)
        bits = editor.bits_per_dim(crops).tolist()
    service.metrics.faces.labels("likelihood").inc(len(detected))
    heldout = heldout_bits_per_dim(editor)
    faces = []
    for face, face_bits in zip(detected, bits):
        difference, label = typicality(face_bits, heldout)
        faces.append(
            LikelihoodFace.of(
                face,
                bits_per_dim=face_bits,
                difference_from_heldout=difference,
                typicality=label,
            )
        )
    return LikelihoodResponse(heldout_bits_per_dim=heldout, faces=faces)


@router.get(
    "/samples",
    name="sample_faces",
    summary="New faces sampled from the flow",
    tags=["analysis"],
    response_model=SamplesResponse,
    responses={
        **image_responses(
            "A grid of faces, left to right, top to bottom.",
            {"X-Seed": "The seed used; the same seed gives the same faces."},
        ),
        **error_responses(422, 503),
    },
)
def sample_faces(
    request: Request,
    service: ServiceDep,
    editor: EditorDep,
    n: Annotated[int, Query(ge=1, le=MAX_SAMPLES, description="How many faces.", examples=[8])] = 8,
    temperature: Annotated[
        float,
        Query(
            ge=0, le=1.5, allow_inf_nan=False, examples=[0.7], description="Lower gives smoother, more average faces."
        ),
    ] = 0.7,
    seed: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, examples=[1234], description="Random when not given.")
    ] = None,
    format: Annotated[FormatChoice, Query(description="Image format.", examples=["png"])] = "png",
) -> Response | SamplesResponse:
    """Faces at the flow's resolution, with ages, genders and ethnicities drawn from the same seed."""
    seed = secrets.randbelow(2**31) if seed is None else seed
    as_json = wants_json(request)
    with service.gate.slot():
        faces = [tensor_to_image(face) for face in editor.sample(n, temperature, seed)]
        pictures = faces if as_json else [grid(faces, int(np.ceil(np.sqrt(n))))]
        encoded = [encode_image(picture, format) for picture in pictures]
    if as_json:
        return SamplesResponse(
            seed=seed, temperature=temperature, images=[describe(e, f, format) for e, f in zip(encoded, faces)]
        )
    return image_file(encoded[0], format, {"X-Seed": str(seed)})

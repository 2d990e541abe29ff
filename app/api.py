"""The HTTP API, versioned under /v1, and the probes /healthz, /readyz and /metrics.

Endpoints that decode photos or run the model are plain `def`: FastAPI runs them in worker threads, and
the inference gate bounds how many run at once. Images are returned as files, or as JSON with base64
when the request says `Accept: application/json`.
"""

from __future__ import annotations

import base64
import secrets
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.auth import UNAUTHORIZED, key_is_valid
from app.errors import RETRY_AFTER_SECONDS, ApiError
from app.imaging import OUTPUT_FORMATS, DecodedImage, decode_image, encode_image, grid, labelled_strip, tensor_to_image
from app.schemas import (
    AgedFace,
    AgeForm,
    AgeResponse,
    DetectedFace,
    EncodedImage,
    ErrorResponse,
    FacesResponse,
    FormatChoice,
    Health,
    LikelihoodFace,
    LikelihoodResponse,
    ModelInfo,
    PhotoForm,
    Readiness,
    SamplesResponse,
    SeriesFace,
    SeriesForm,
    SeriesResponse,
    SeriesStep,
    SkippedFace,
    Typicality,
    check_target_ages,
)
from app.service import Service
from model.editor import SKIP_REASONS, AgeEditor, FaceResult, PhotoResult

MAX_SAMPLES = 64
MULTIPART = "multipart/form-data"

_ERROR_EXAMPLES = {
    400: {
        "corrupt_image": "The photo is damaged or incomplete and cannot be read.",
        "bad_request": "There was an error parsing the body",
    },
    401: {"unauthorized": UNAUTHORIZED},
    408: {"upload_timeout": "The upload stalled or took too long and was closed. Send it again."},
    413: {
        "upload_too_large": "The upload is larger than the limit of 20.0 MB.",
        "too_many_pixels": "The photo has 12000 x 9000 pixels (108 megapixels); the limit is 40 megapixels. "
        "Send a smaller photo.",
    },
    415: {"unsupported_image": "GIF files are not supported. Send a JPEG, PNG, WebP or HEIC photo."},
    422: {
        "no_face": "No face was found in the photo. Use a photo where a face is clearly visible.",
        "face_too_small": "The face is too small (28 px; at least 40 px are needed). Use a closer or larger photo.",
        "invalid_parameters": "Give exactly one of years and target_age: years to add, or the age to take "
        "the faces to.",
        "target_age_out_of_range": "The target age 95 is outside the model's range of 1 to 90 years.",
        "output_too_large": "The result is 20000 x 3000 pixels, more than WEBP can hold (16383 pixels a "
        "side). Ask for png instead.",
    },
    503: {
        "busy": "The service is busy. Try again in a few seconds.",
        "uploads_busy": "The service is receiving too many uploads at once. Try again in a few seconds.",
        "model_loading": "The model is still loading. Try again in a few seconds.",
        "model_unavailable": "The model could not be loaded. Please try again later.",
    },
}
_ERROR_DESCRIPTIONS = {
    400: "The photo or the request body cannot be read.",
    401: "API keys are configured and the request has no valid `Authorization: Bearer <key>` (answered before "
    "the body is read).",
    408: "The upload paused longer than BODY_IDLE_TIMEOUT or took longer than BODY_TIMEOUT.",
    413: "The upload has too many bytes or the photo too many pixels (both checked before decoding).",
    415: "The file is not a JPEG, PNG, WebP or HEIC image.",
    422: "A parameter is invalid, no usable face was found, or the result cannot be encoded as asked.",
    503: "Every model slot is busy and the queue is full, or uploads in progress hold MAX_UPLOADING_BYTES (see "
    "`Retry-After`), or the model is still loading.",
}


def error_responses(*status_codes: int) -> dict:
    return {
        status: {
            "model": ErrorResponse,
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {
                "application/json": {
                    "examples": {
                        code: {"value": {"error": {"code": code, "message": message}}}
                        for code, message in _ERROR_EXAMPLES[status].items()
                    }
                }
            },
        }
        for status in status_codes
    }


def image_responses(description: str, headers: dict[str, str]) -> dict:
    """The 200 response as an image file; FastAPI adds the JSON body from the response model beside it."""
    return {
        200: {
            "description": description + " An image file, or JSON with base64 under `Accept: application/json`.",
            "content": {
                f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in OUTPUT_FORMATS.values()
            },
            "headers": {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()},
        }
    }


def get_service(request: Request) -> Service:
    return request.app.state.service


bearer = HTTPBearer(auto_error=False, description="Needed only when the service runs with API_KEYS set.")


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """The key, checked again where the routes declare it (ApiKeyMiddleware answers before the body)."""
    keys = get_service(request).settings.api_keys
    if keys and not key_is_valid(request.headers.get("authorization", ""), keys):
        raise ApiError(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})


async def get_editor(request: Request) -> AgeEditor:
    service = get_service(request)
    if service.editor is None:
        if service.load_error:
            raise ApiError(503, "model_unavailable", _ERROR_EXAMPLES[503]["model_unavailable"])
        raise ApiError(
            503, "model_loading", _ERROR_EXAMPLES[503]["model_loading"], {"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return service.editor


ServiceDep = Annotated[Service, Depends(get_service)]
EditorDep = Annotated[AgeEditor, Depends(get_editor)]

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=error_responses(401))
probes = APIRouter()


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def decode_upload(service: Service, form: PhotoForm) -> DecodedImage:
    settings = service.settings
    return decode_image(form.image.file.read(), settings.max_upload_bytes, settings.max_pixels)


def aligned_faces(faces: list[FaceResult]) -> list[np.ndarray]:
    """Each edited face with the flow's framing, at the editor's work resolution."""
    return [face.work_after for face in faces if face.work_after is not None]


def skipped_faces(result: PhotoResult) -> list[SkippedFace]:
    return [
        SkippedFace(
            box=f.box, landmarks=f.landmarks, score=f.score, reason=f.reason, explanation=SKIP_REASONS[f.reason]
        )
        for f in result.skipped
    ]


def count_headers(result: PhotoResult) -> dict[str, str]:
    """How many faces were found, edited and skipped, and why each skipped one was (largest first)."""
    return {
        "X-Faces": str(len(result.faces)),
        "X-Faces-Found": str(result.found),
        "X-Faces-Skipped": str(len(result.skipped)),
        "X-Faces-Skipped-Reasons": ",".join(f.reason for f in result.skipped),
    }


def describe(encoded: bytes, image: np.ndarray, format_name: str) -> EncodedImage:
    height, width = image.shape[:2]
    return EncodedImage(
        media_type=OUTPUT_FORMATS[format_name].media_type,
        width=width,
        height=height,
        data=base64.b64encode(encoded).decode("ascii"),
    )


def image_file(encoded: bytes, format_name: str, headers: dict[str, str]) -> Response:
    return Response(encoded, media_type=OUTPUT_FORMATS[format_name].media_type, headers=headers)


def years_list(values) -> str:
    return ",".join(f"{v:.1f}" for v in values)


def face_fields(face: FaceResult) -> dict:
    return {"box": face.box, "landmarks": face.landmarks, "score": face.score}


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
            AgedFace(
                **face_fields(f),
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
            faces=[SeriesFace(**face_fields(f), age_before=f.age_before) for f in faces],
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
            crops = torch.stack([a.crops[editor.resolution] for a in editor.align(decoded.rgb, usable)])
            ages = editor.estimate_age(crops).tolist()
    service.metrics.faces.labels("faces").inc(len(detected))
    age_of = {id(f): age for f, age in zip(usable, ages)}
    height, width = decoded.rgb.shape[:2]
    return FacesResponse(
        width=width,
        height=height,
        min_face_size=editor.aligner.min_face_size,
        faces=[
            DetectedFace(
                box=f.box.tolist(),
                landmarks=f.landmarks.tolist(),
                score=f.score,
                age=age_of.get(id(f)),
                too_small=editor.aligner.is_too_small(f),
            )
            for f in detected
        ],
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
        crops = torch.stack([a.crops[editor.resolution] for a in editor.align(decoded.rgb, detected)])
        bits = editor.bits_per_dim(crops).tolist()
    service.metrics.faces.labels("likelihood").inc(len(detected))
    heldout = heldout_bits_per_dim(editor)
    faces = []
    for face, face_bits in zip(detected, bits):
        difference, label = typicality(face_bits, heldout)
        faces.append(
            LikelihoodFace(
                box=face.box.tolist(),
                landmarks=face.landmarks.tolist(),
                score=face.score,
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


@router.get(
    "/model",
    name="model_info",
    summary="What the model is",
    tags=["model"],
    response_model=ModelInfo,
    responses=error_responses(503),
)
async def model_info(editor: EditorDep) -> ModelInfo:
    return ModelInfo(**editor.info())


@probes.get("/healthz", summary="The process is alive", tags=["probes"], response_model=Health)
async def healthz() -> Health:
    return Health()


@probes.get(
    "/readyz",
    summary="The model is loaded and requests can be served",
    tags=["probes"],
    response_model=Readiness,
    responses=error_responses(503),
)
async def readyz(editor: EditorDep) -> Readiness:
    return Readiness()


@probes.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["probes"],
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Request counts, latency histograms, faces processed.",
        }
    },
)
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

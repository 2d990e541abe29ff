"""Request forms and response bodies of the API, with the examples shown on /docs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Self

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.imaging import OUTPUT_FORMATS
from model import align
from model.edit_rules import MAX_YEARS, NO_FACE, PLAUSIBLE_AGES, FaceChoice, check_one_kind_of_edit
from model.editor import SKIP_REASONS

MAX_SERIES_AGES = 8

OutputChoice = Literal["photo", "face"]
# the names of app.imaging.OUTPUT_FORMATS: a Literal of them for pydantic and /docs, a str for mypy (which
# takes no Literal built from a dict's keys)
if TYPE_CHECKING:
    FormatChoice = str
else:
    FormatChoice = Literal[tuple(OUTPUT_FORMATS)]
Typicality = Literal["typical", "unusual", "very unusual"]

IMAGE_DESCRIPTION = "The photo: JPEG, PNG, WebP or HEIC (any colour mode); EXIF orientation is applied."
FACES_DESCRIPTION = "`all` edits every face found; `largest` only the largest one."
FORMAT_DESCRIPTION = "Image format of the result. PNG and WebP keep the upload's transparency."


class PhotoForm(BaseModel):
    """A photo and which of its faces to use."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description=IMAGE_DESCRIPTION)
    faces: FaceChoice = Field("all", description=FACES_DESCRIPTION)


class AgeForm(PhotoForm):
    years: float | None = Field(
        None,
        ge=-MAX_YEARS,
        le=MAX_YEARS,
        allow_inf_nan=False,
        examples=[30],
        description="Years to add (negative: younger). Give this or `target_age`.",
    )
    # Try-it-out on /docs fills every field in, this one with its example: null, sent as the word "null"
    target_age: float | None = Field(
        None,
        ge=PLAUSIBLE_AGES[0],
        le=PLAUSIBLE_AGES[1],
        allow_inf_nan=False,
        examples=[None],
        description="Age in years to take every face to, e.g. 70. Give this or "
        "`years`; it must lie within the model's age range "
        "(GET /v1/model).",
    )
    output: OutputChoice = Field(
        "photo",
        description="`photo`: the whole photo with the aged faces pasted "
        "back, same size and orientation as the upload. `face`: "
        "the aligned face(s), several side by side.",
    )
    format: FormatChoice = Field("jpeg", description=FORMAT_DESCRIPTION)

    @field_validator("years", "target_age", mode="before")
    @classmethod
    def not_given(cls, value):
        """A form has no null: an empty field or the word null means the field was not given."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "null") else value

    @model_validator(mode="after")
    def one_kind_of_edit(self) -> AgeForm:
        check_one_kind_of_edit(self.years, self.target_age)
        return self


class SeriesForm(PhotoForm):
    ages: str = Field(
        examples=["10,30,50,70"], description=f"Target ages in years, comma separated (at most {MAX_SERIES_AGES})."
    )
    output: OutputChoice = Field(
        "face",
        description="`face`: the aligned faces at each age side by side "
        "(one row per face). `photo`: the whole photos side by side.",
    )
    format: FormatChoice = Field("jpeg", description=FORMAT_DESCRIPTION)

    @field_validator("ages")
    @classmethod
    def ages_are_numbers(cls, ages: str) -> str:
        values = [word.strip() for word in ages.split(",") if word.strip()]
        if not values:
            raise ValueError("Give at least one age, e.g. 10,30,50,70.")
        if len(values) > MAX_SERIES_AGES:
            raise ValueError(f"Give at most {MAX_SERIES_AGES} ages.")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise ValueError("Give the ages as numbers separated by commas, e.g. 10,30,50,70.") from None
        low, high = PLAUSIBLE_AGES
        if not all(low <= n <= high for n in numbers):
            raise ValueError(f"Give ages between {low} and {high}.")
        return ",".join(values)

    @property
    def target_ages(self) -> list[float]:
        return [float(v) for v in self.ages.split(",")]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable reason.", examples=["no_face"])
    message: str = Field(
        description="What went wrong, for people.",
        examples=[NO_FACE],
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class EncodedImage(BaseModel):
    media_type: str = Field(examples=["image/jpeg"])
    width: int = Field(examples=[640])
    height: int = Field(examples=[480])
    data: str = Field(description="The image file, base64 encoded.", examples=["/9j/4AAQSkZJRgABAQAAAQABAAD..."])


class Face(BaseModel):
    box: list[float] = Field(
        description="x1, y1, x2, y2 in pixels of the upright photo.", examples=[[105.4, 37.6, 215.1, 189.0]]
    )
    landmarks: list[list[float]] = Field(
        description="(x, y) of the left eye, right eye, nose tip, left and right mouth corner.",
        examples=[[[133.2, 97.4], [184.9, 96.1], [160.3, 124.8], [139.0, 153.2], [182.5, 152.0]]],
    )
    score: float = Field(description="Detector confidence, 0 to 1.", examples=[0.999])

    @classmethod
    def of(cls, face: align.DetectedFace, **fields) -> Self:
        """The detected face as the API shows it (box, landmarks, score), with the subclass's other `fields`."""
        return cls(box=face.box.tolist(), landmarks=face.landmarks.tolist(), score=face.score, **fields)


class AgedFace(Face):
    age_before: float = Field(description="Estimated age of the face in the upload, years.", examples=[34.0])
    age_after: float = Field(description="Age the face was taken to, years.", examples=[64.0])
    shift: float = Field(description="age_after - age_before, years.", examples=[30.0])
    age_target: float | None = Field(
        default=None,
        description="The age the edit aimed at: age_before + years, or target_age, clamped into the model's age range.",
        examples=[64.0],
    )
    clamped: bool = Field(
        default=False,
        description="The age asked for was outside the model's age range and the end of the range was used instead.",
        examples=[False],
    )
    strength: float = Field(
        default=1.0,
        description="Share of the change to age_target applied: 1, or less "
        "where the likelihood guard scaled back an edit the model found less likely than "
        "real faces (age_after = age_before + strength x (age_target - age_before)).",
        examples=[1.0],
    )


class SkippedFace(Face):
    reason: str = Field(
        description="Why the face was not edited: " + "; ".join(f"`{k}` {v}" for k, v in SKIP_REASONS.items()) + ".",
        json_schema_extra={"enum": list(SKIP_REASONS)},
        examples=["face_limit"],
    )
    explanation: str = Field(description="The reason, for people.", examples=[SKIP_REASONS["face_limit"]])


FACES_FOUND = Field(description="Faces found in the photo: those edited (`faces`) and those skipped.", examples=[1])
SKIPPED = Field(description="Faces found and not edited, largest first, each with its reason.")


class AgeResponse(BaseModel):
    faces: list[AgedFace]
    faces_found: int = FACES_FOUND
    skipped: list[SkippedFace] = SKIPPED
    image: EncodedImage = Field(description="The result: the photo, or the aligned face(s).")


class SeriesFace(Face):
    age_before: float = Field(description="Estimated age of the face in the upload, years.", examples=[34.0])


class SeriesStep(BaseModel):
    target_age: float = Field(examples=[70.0])
    ages_after: list[float] = Field(
        description="Age each face was taken to (the target, within the model's age range), in the order of `faces`.",
        examples=[[70.0]],
    )
    image: EncodedImage = Field(description="The photo or the aligned face(s) at this age.")


class SeriesResponse(BaseModel):
    faces: list[SeriesFace]
    faces_found: int = FACES_FOUND
    skipped: list[SkippedFace] = SKIPPED
    steps: list[SeriesStep]


class DetectedFace(Face):
    age: float | None = Field(
        description="Estimated age in years; null when the face is too small to use.", examples=[34.0]
    )
    too_small: bool = Field(
        description="Smaller than the service's minimum face size: it cannot be edited.", examples=[False]
    )


class FacesResponse(BaseModel):
    width: int = Field(description="Width of the upright photo.", examples=[640])
    height: int = Field(description="Height of the upright photo.", examples=[480])
    min_face_size: int = Field(description="Smallest face side, in pixels, that can be edited.", examples=[24])
    faces: list[DetectedFace] = Field(description="Largest first; empty when there is no face.")


class LikelihoodFace(Face):
    bits_per_dim: float = Field(
        description="Negative log-likelihood of the aligned face under the flow, in bits "
        "per dimension: lower means more likely.",
        examples=[1.31],
    )
    difference_from_heldout: float | None = Field(
        description="bits_per_dim minus the model's mean over held-out faces; null when unknown.", examples=[0.04]
    )
    typicality: Typicality | None = Field(
        description="`typical` within 5% of the held-out mean (or below it), `unusual` within 15%, "
        "`very unusual` beyond; null when the held-out mean is unknown.",
        examples=["typical"],
    )


class LikelihoodResponse(BaseModel):
    heldout_bits_per_dim: float | None = Field(
        description="Mean bits/dim of held-out faces (GET /v1/model).", examples=[1.27]
    )
    faces: list[LikelihoodFace]


class SamplesResponse(BaseModel):
    seed: int = Field(examples=[1234])
    temperature: float = Field(examples=[0.7])
    images: list[EncodedImage]


class DetailInfo(BaseModel):
    """The 128 px detail stage: a flow of the face's fine detail given its 64 px face and age, which redraws
    the detail at the new age."""

    resolution: int = Field(description="Side of the aligned face the detail stage works on, pixels.")
    context_blur: int = Field(description="Pixels of the 64 px face averaged together for the stage's context.")
    age_knots: list[float] = Field(description="Ages, years, between which the stage's age condition is spread.")
    parameters: int = Field(description="Number of trained parameters.")


class ModelInfo(BaseModel):
    """What the model is, from the weights folder; editor.json may add more fields than these."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "resolution": 64,
                    "age_range": [1.0, 90.0],
                    "trajectory": "posthoc",
                    "training_data": "UTKFace (64 and 200 px) and All-Age-Faces, aligned by model.prepare; "
                    "research and demonstration use only",
                    "training_faces": 24597,
                    "framing": "tight",
                    "heldout_bits_per_dim": 1.2827,
                    "training_epochs": 15.0,
                    "heldout_age_error_years": 5.93,
                    "bits_per_dim_definition": "held-out, 5-bit pixels, conditioned on each face's labels",
                }
            ]
        },
    )

    resolution: int = Field(description="Side of the aligned face the flow works on, pixels.")
    age_range: list[float] = Field(description="Youngest and oldest age, years, a face can be taken to.")
    trajectory: str = Field(description="How ages move through the flow's latent space.")
    training_data: str | None = Field(None, description="What the model was trained on, and its terms of use.")
    training_faces: int | None = Field(None, description="Number of training faces.")
    heldout_bits_per_dim: float | None = Field(
        None, description="Negative log-likelihood of held-out faces, bits per dimension: lower is better."
    )
    bits_per_dim_definition: str | None = Field(None, description="How heldout_bits_per_dim was measured.")
    training_epochs: float | None = Field(None, description="Passes over the training faces the flow was trained for.")
    heldout_age_error_years: float | None = Field(
        None, description="Mean absolute error, years, of the current age the model reads from held-out faces."
    )
    detail: DetailInfo | None = Field(
        None, description="The detail stage that redraws the face's fine detail at the new age; null: none."
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"

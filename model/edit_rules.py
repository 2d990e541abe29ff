"""What an edit may ask for, and the errors that refuse one: shared by the editor, the service and the CLI.

Each error carries a message for the person who sent the photo, and the HTTP status and stable code that the
service answers it with. No torch here: the CLI checks its arguments before it loads the model.
"""

from __future__ import annotations

from typing import Literal, get_args

MAX_YEARS = 100  # years an edit may add or take away
PLAUSIBLE_AGES = (0, 120)  # years: a target age beyond these is refused before the model's own range is asked
FaceChoice = Literal["all", "largest"]  # which faces of a photo to edit: every one found, or the largest only
FACE_CHOICES: tuple[str, ...] = get_args(FaceChoice)

NO_FACE = "No face was found in the photo. Use a photo where a face is clearly visible."
ONE_KIND_OF_EDIT = "Give exactly one of years and target_age: years to add, or the age to take the faces to."
YEARS_OUT_OF_RANGE = f"Give years between {-MAX_YEARS} and {MAX_YEARS}: the years to add, negative for younger."


class EditError(ValueError):
    """A photo that cannot be edited as asked, with a message meant for the person who sent it."""

    status_code = 422
    code = "cannot_edit"


class NoFaceError(EditError):
    code = "no_face"


class FaceTooSmallError(EditError):
    code = "face_too_small"


class TargetAgeOutOfRange(EditError):
    code = "target_age_out_of_range"


class InvalidEdit(EditError):
    code = "invalid_parameters"


def no_plausible_face_message(detections: int) -> str:
    """No face to edit although the detector found `detections`, none of them plausible as a face."""
    return (
        f"No face was found in the photo: {detections} detection(s) did not look like a face to the model. "
        "Use a photo where a face is clearly visible."
    )


def face_too_small_message(size: float, min_face_size: int) -> str:
    return (
        f"The face is too small ({size:.0f} px; at least {min_face_size} px are needed). Use a closer or larger photo."
    )


def target_age_message(age: float, age_range: tuple[float, float]) -> str:
    low, high = age_range
    return f"The target age {age:g} is outside the model's range of {low:g} to {high:g} years."


def check_one_kind_of_edit(years: object, target_age: object) -> None:
    """An edit gives years to add or a target age: exactly one of them (None: not given)."""
    if (years is None) == (target_age is None):
        raise InvalidEdit(ONE_KIND_OF_EDIT)


def check_years(years: float | None) -> None:
    """Years to add lie within MAX_YEARS either way (None: not given). The API's form checks the same bounds
    with its own validation (app.schemas.AgeForm.years)."""
    if years is not None and not -MAX_YEARS <= years <= MAX_YEARS:
        raise InvalidEdit(YEARS_OUT_OF_RANGE)


def check_target_ages(ages: list[float], age_range: tuple[float, float]) -> None:
    """Target ages must lie in the model's range (a form only checks that they are PLAUSIBLE_AGES)."""
    for age in ages:
        if not age_range[0] <= age <= age_range[1]:
            raise TargetAgeOutOfRange(target_age_message(age, age_range))

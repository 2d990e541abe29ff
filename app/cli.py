"""Age the faces in photos from the command line, with the service's pipeline, limits and error messages.

    python -m app.cli photo.jpg --years 30 -o older.jpg
    python -m app.cli photos/ more.heic --target-age 70 --faces largest -o aged/
    python -m app.cli photo.jpg --years 30 -o older.jpg --server http://127.0.0.1:8000

One input photo and an output with an image suffix writes that file; otherwise the output is a folder and
each result keeps its photo's name. Without --server, each call starts Python, imports torch and loads the
model (seconds; it says how many), then ages the photos one after another; with --server, a running service
does the work and the call takes about as long as the edits. The exit status is 0 when every photo was aged,
1 when any failed, 2 for a mistake in the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

from app.imaging import OUTPUT_FORMATS, DecodedImage, ImageError, decode_image, encode_image, set_decompression_limit
from model.edit_rules import FACE_CHOICES, EditError, check_one_kind_of_edit, check_target_ages, check_years

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"}
FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
# what each decoded photo is written as when neither --format nor the output's suffix says
FORMAT_OF_SOURCE = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "HEIF": "jpeg"}
SERVER_TIMEOUT_SECONDS = 300


class UsageError(Exception):
    pass


class OutputError(Exception):
    pass


class ServiceError(Exception):
    """The service answered with an error: its message, written for people."""


class ServiceUnreachable(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description="Age the faces in photos.")
    parser.add_argument("inputs", nargs="+", type=Path, help="photos, or folders of photos (any number)")
    parser.add_argument("--years", type=float, help="years to add; negative makes faces younger")
    parser.add_argument("--target-age", type=float, help="age in years to take every face to")
    parser.add_argument("--faces", choices=FACE_CHOICES, default="all", help="which faces to age")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="the output photo (one input), or a folder for the results"
    )
    parser.add_argument(
        "--format",
        choices=tuple(OUTPUT_FORMATS),
        help="output format; by default from the output's suffix, else the photo's own",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="send the photos to a running service (e.g. http://127.0.0.1:8000) instead of loading the model here",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FACE_AGE_API_KEY"),
        help="with --server: the service's API key (default: $FACE_AGE_API_KEY)",
    )
    parser.add_argument("--weights", type=Path, help="model folder (default: $WEIGHTS_DIR, else weights/)")
    parser.add_argument("--device", help="auto, cpu or cuda (default: $DEVICE, else auto)")
    args = parser.parse_args(argv)
    try:
        check_one_kind_of_edit(args.years, args.target_age)
        check_years(args.years)
    except EditError as exc:
        parser.error(str(exc))
    if args.server and (args.weights or args.device):
        parser.error("--weights and --device choose the model loaded here; with --server the service's is used")
    return args


def photos_in(inputs: list[Path]) -> list[Path]:
    photos = []
    for path in inputs:
        if path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.is_file():
            photos.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if not photos:
        raise UsageError("no photos found (looked for " + ", ".join(sorted(PHOTO_SUFFIXES)) + ")")
    return photos


def plan(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """The photos to age, and whether the output is one file (else a folder, created here)."""
    photos = photos_in(args.inputs)
    single_file = (
        len(photos) == 1
        and not args.inputs[0].is_dir()
        and not args.output.is_dir()
        and args.output.suffix.lower() in FORMAT_OF_SUFFIX
    )
    if single_file:
        folder = args.output.parent
        if not folder.is_dir():
            raise UsageError(
                f"{args.output}: the folder {folder} does not exist. Make it first, or choose another output."
            )
        if not os.access(folder, os.W_OK):
            raise UsageError(f"{args.output}: the folder {folder} cannot be written to. Choose another output.")
    else:
        try:
            args.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"{args.output}: cannot make a folder for the results ({exc.strerror or exc}). Choose another output."
            ) from None
    return photos, single_file


def output_for(
    photo: Path, photo_format: str, output: Path, single_file: bool, format_name: str | None
) -> tuple[Path, str]:
    """Where the result goes and in which format; photo_format: the one the photo itself would be written in."""
    if single_file:
        return output, format_name or FORMAT_OF_SUFFIX[output.suffix.lower()]
    format_name = format_name or photo_format
    return output / (photo.stem + OUTPUT_FORMATS[format_name].extension), format_name


def write_result(destination: Path, data: bytes) -> None:
    try:
        destination.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write {destination} ({exc.strerror or exc})") from None


def describe(photo: Path, destination: Path, ages_before: list[float], ages_after: list[float], seconds: float) -> str:
    ages = ", ".join(f"{before:.0f} -> {after:.0f}" for before, after in zip(ages_before, ages_after))
    return f"{photo} -> {destination}: {len(ages_before)} face(s), ages {ages} ({seconds:.1f} s)"


# --- here: the model loaded in this process ---


def load_editor(settings):
    from app.service import load_editor as load

    return load(settings)


def age_one(editor, settings, args: argparse.Namespace, photo: Path, single_file: bool) -> str:
    """Ages one photo, writes the result and says what was done."""
    started = time.perf_counter()
    decoded: DecodedImage = decode_image(photo.read_bytes(), settings.max_upload_bytes, settings.max_pixels)
    result = editor.age_photo(decoded.rgb, years=args.years, target_age=args.target_age, faces=args.faces)
    destination, format_name = output_for(
        photo, FORMAT_OF_SOURCE[decoded.source_format], args.output, single_file, args.format
    )
    write_result(destination, encode_image(result.image, format_name, decoded.alpha, decoded.icc_profile))
    return describe(
        photo,
        destination,
        [f.age_before for f in result.faces],
        [f.age_after for f in result.faces],
        time.perf_counter() - started,
    )


def age_here(args: argparse.Namespace, photos: list[Path], single_file: bool) -> int:
    started = time.perf_counter()
    import torch  # here, and timed: with --server it is never imported

    from app.settings import Settings, SettingsError, checked_device

    imported = time.perf_counter()
    try:
        settings = Settings.from_env()
        device = checked_device(args.device) if args.device else settings.device
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weights = args.weights or settings.weights_dir
    set_decompression_limit(settings.max_pixels)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    print(f"Loading the model from {weights}...", file=sys.stderr, flush=True)
    try:
        editor = load_editor(replace(settings, weights_dir=weights, device=device))
    except (OSError, ValueError) as exc:
        print(f"error: the model in {weights} could not be loaded: {exc}", file=sys.stderr)
        return 1
    loaded = time.perf_counter()
    print(
        f"Ready in {loaded - started:.1f} s (importing torch and the model code {imported - started:.1f} s, "
        f"loading the model {loaded - imported:.1f} s); --server URL uses a running service and skips this.",
        file=sys.stderr,
    )
    if args.target_age is not None:
        try:
            check_target_ages([args.target_age], editor.age_range)
        except EditError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    failures = 0
    for photo in photos:
        try:
            print(age_one(editor, settings, args, photo, single_file), flush=True)
        except (ImageError, EditError) as exc:
            print(f"{photo}: {exc}", file=sys.stderr)
            failures += 1
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
        except OSError as exc:
            print(f"{photo}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


# --- a running service ---


def multipart(fields: dict[str, str], photo: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + photo.read_bytes()
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def age_on_server(args: argparse.Namespace, photo: Path, single_file: bool) -> str:
    """Sends one photo to the service, writes its answer and says what was done."""
    started = time.perf_counter()
    # the service decodes the photo, so its own format is told by its suffix here (HEIC is written as JPEG)
    destination, format_name = output_for(
        photo, FORMAT_OF_SUFFIX.get(photo.suffix.lower(), "jpeg"), args.output, single_file, args.format
    )
    edit = {"years": f"{args.years:g}"} if args.years is not None else {"target_age": f"{args.target_age:g}"}
    body, content_type = multipart({**edit, "faces": args.faces, "output": "photo", "format": format_name}, photo)
    headers = {"Content-Type": content_type, "Accept": OUTPUT_FORMATS[format_name].media_type}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    request = urllib.request.Request(args.server.rstrip("/") + "/v1/age", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_SECONDS) as response:
            image, answer = response.read(), response.headers
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"the service answered {exc.code} {exc.reason}"
        raise ServiceError(message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceUnreachable(getattr(exc, "reason", exc)) from None
    write_result(destination, image)
    before, after = (
        [float(v) for v in answer.get(name, "").split(",") if v] for name in ("X-Ages-Before", "X-Ages-After")
    )
    return describe(photo, destination, before, after, time.perf_counter() - started)


def age_with_server(args: argparse.Namespace, photos: list[Path], single_file: bool) -> int:
    failures = 0
    for photo in photos:
        try:
            print(age_on_server(args, photo, single_file), flush=True)
        except ServiceUnreachable as exc:
            print(
                f"error: the service at {args.server} cannot be reached ({exc}). Start it (make serve), or "
                f"leave out --server to load the model here.",
                file=sys.stderr,
            )
            return 1
        except ServiceError as exc:
            print(f"{photo}: {exc}", file=sys.stderr)
            failures += 1
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        photos, single_file = plan(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.server:
        return age_with_server(args, photos, single_file)
    return age_here(args, photos, single_file)


if __name__ == "__main__":
    sys.exit(main())

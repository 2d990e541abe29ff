"""Age the faces in photos from the command line, with the service's pipeline, limits and error messages.

    python -m app.cli photo.jpg --years 30 -o older.jpg
    python -m app.cli photos/ more.heic --target-age 70 --faces largest -o aged/

One input photo and an output with an image suffix writes that file; otherwise the output is a folder and
each result keeps its photo's name. The exit status is 0 when every photo was aged, 1 when any failed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from app.imaging import OUTPUT_FORMATS, DecodedImage, ImageError, decode_image, encode_image, \
    set_decompression_limit
from app.schemas import check_target_ages
from app.service import load_editor
from app.settings import Settings, SettingsError, checked_device
from model.editor import AgeEditor, EditError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"}
FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
# what each decoded photo is written as when neither --format nor the output's suffix says
FORMAT_OF_SOURCE = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "HEIF": "jpeg"}


class UsageError(Exception):
    pass


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description="Age the faces in photos.")
    parser.add_argument("inputs", nargs="+", type=Path, help="photos, or folders of photos")
    edit = parser.add_mutually_exclusive_group(required=True)
    edit.add_argument("--years", type=float, help="years to add; negative makes faces younger")
    edit.add_argument("--target-age", type=float, help="age in years to take every face to")
    parser.add_argument("--faces", choices=("all", "largest"), default="all", help="which faces to age")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="the output photo (one input), or a folder for the results")
    parser.add_argument("--format", choices=tuple(OUTPUT_FORMATS),
                        help="output format; by default from the output's suffix, else the photo's own")
    parser.add_argument("--weights", type=Path, default=settings.weights_dir,
                        help=f"model folder (default: {settings.weights_dir})")
    parser.add_argument("--device", default=settings.device, help="auto, cpu or cuda (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.years is not None and not -100 <= args.years <= 100:
        parser.error("--years must be between -100 and 100")
    try:
        args.device = checked_device(args.device)
    except SettingsError as exc:
        parser.error(str(exc))
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
    single_file = (len(photos) == 1 and not args.inputs[0].is_dir() and not args.output.is_dir()
                   and args.output.suffix.lower() in FORMAT_OF_SUFFIX)
    if not single_file:
        try:
            args.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{args.output}: cannot make a folder for the results ({exc.strerror or exc})")
    return photos, single_file


def output_for(photo: Path, decoded: DecodedImage, output: Path, single_file: bool,
               format_name: str | None) -> tuple[Path, str]:
    """Where the result goes and in which format."""
    if single_file:
        return output, format_name or FORMAT_OF_SUFFIX[output.suffix.lower()]
    format_name = format_name or FORMAT_OF_SOURCE[decoded.source_format]
    return output / (photo.stem + OUTPUT_FORMATS[format_name].extension), format_name


def age_one(editor: AgeEditor, settings: Settings, args: argparse.Namespace, photo: Path,
            single_file: bool) -> str:
    """Ages one photo, writes the result and says what was done."""
    decoded = decode_image(photo.read_bytes(), settings.max_upload_bytes, settings.max_pixels)
    result = editor.age_photo(decoded.rgb, years=args.years, target_age=args.target_age, faces=args.faces)
    destination, format_name = output_for(photo, decoded, args.output, single_file, args.format)
    destination.write_bytes(encode_image(result.image, format_name, decoded.alpha, decoded.icc_profile))
    ages = ", ".join(f"{f.age_before:.0f} -> {f.age_after:.0f}" for f in result.faces)
    return f"{photo} -> {destination}: {len(result.faces)} face(s), ages {ages}"


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings)
    try:
        photos, single_file = plan(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    set_decompression_limit(settings.max_pixels)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        editor = load_editor(replace(settings, weights_dir=args.weights, device=args.device))
    except (OSError, ValueError) as exc:
        print(f"error: the model in {args.weights} could not be loaded: {exc}", file=sys.stderr)
        return 1
    if args.target_age is not None:
        try:
            check_target_ages([args.target_age], editor.age_range)
        except EditError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    failures = 0
    for photo in photos:
        try:
            print(age_one(editor, settings, args, photo, single_file))
        except (ImageError, EditError) as exc:
            print(f"{photo}: {exc}", file=sys.stderr)
            failures += 1
        except OSError as exc:
            print(f"{photo}: {exc.strerror or exc}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

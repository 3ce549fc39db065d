"""Breakfast, COIN and Charades read in their public formats, as distributed, into a ``VideoSet``.

Each reader is ``read_<name>(root, video_template=None, annotations=None) -> VideoSet`` over all
splits (``train`` / ``test``); the templates' ``{fields}`` are filled from the annotations.
"""

from __future__ import annotations

import csv
import re
import string
from pathlib import Path
from typing import Any, Callable

from pcmci.data.records import LabelSet, VideoRecord, VideoSet, read_json, read_text, repeated
from pcmci.errors import ConfigError, DataError

BREAKFAST_TEMPLATE = "{person}/{camera}/{person}_{activity}.avi"
BREAKFAST_ACTIVITIES = {
    "cereals": "make cereals", "coffee": "make coffee", "friedegg": "fry egg", "juice": "make juice",
    "milk": "make milk", "pancake": "make pancake", "salat": "make salad", "sandwich": "make sandwich",
    "scrambledegg": "make scrambled egg", "tea": "make tea",
}
BREAKFAST_ACTIONS = [
    "SIL", "pour_cereals", "pour_milk", "stir_cereals", "take_bowl", "pour_coffee", "take_cup",
    "spoon_sugar", "stir_coffee", "pour_sugar", "pour_oil", "crack_egg", "add_saltnpepper", "fry_egg",
    "take_plate", "put_egg2plate", "take_eggs", "butter_pan", "take_knife", "cut_orange", "squeeze_orange",
    "pour_juice", "take_glass", "take_squeezer", "spoon_powder", "stir_milk", "spoon_flour", "stir_dough",
    "pour_dough2pan", "fry_pancake", "put_pancake2plate", "pour_flour", "cut_fruit", "put_fruit2bowl",
    "peel_fruit", "stir_fruit", "cut_bun", "smear_butter", "take_topping", "put_toppingOnTop",
    "put_bunTogether", "take_butter", "stir_egg", "pour_egg2pan", "stirfry_egg", "add_teabag",
    "pour_water", "stir_tea",
]
_ACTION_TEXT = {"SIL": "background", "add_saltnpepper": "add salt and pepper", "stirfry_egg": "stir-fry egg"}
BREAKFAST_TRAIN, BREAKFAST_TEST = range(3, 47), range(47, 55)  # persons P03-P46 / P47-P54
COIN_TEMPLATE = "videos/{id}.mp4"
COIN_SUBSETS = {"training": "train", "validation": "test", "testing": "test"}
CHARADES_TEMPLATE = "videos/{id}.mp4"
CHARADES_FILES = ("Charades_v1_classes.txt", "Charades_v1_train.csv", "Charades_v1_test.csv")  # the annotations


def action_text(name: str) -> str:
    """Breakfast action id -> label text: ``put_egg2plate`` -> ``put egg to plate``."""
    if name in _ACTION_TEXT:
        return _ACTION_TEXT[name]
    return re.sub(r"(?<=[a-z])([A-Z])", r" \1", name.replace("2", " to ").replace("_", " ")).lower()


def check_template(template: str, allowed: tuple[str, ...], required: tuple[str, ...] = (),
                   plain: bool = False) -> str:
    """``template`` if it is a relative path template whose ``{fields}`` are among ``allowed`` and include
    ``required`` (``plain``: no format spec or conversion either, for templates matched against paths); a
    ``ConfigError`` naming ``data.video_template`` otherwise."""
    problem = f"data.video_template {template!r}"
    try:
        parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as err:
        raise ConfigError(f"{problem}: {err}") from None
    unknown = [f"{{{name}}}" for name, _, _ in parsed if name not in allowed]
    if unknown:
        raise ConfigError(f"{problem}: unknown field(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(f'{{{a}}}' for a in allowed)}")
    missing = [f"{{{name}}}" for name in required if name not in {n for n, _, _ in parsed}]
    if missing:
        raise ConfigError(f"{problem}: must contain {', '.join(missing)}")
    if plain and any(spec or conversion for _, spec, conversion in parsed):
        raise ConfigError(f"{problem}: fields take no format spec or conversion here (plain {{name}} only)")
    if Path(template).is_absolute():
        raise ConfigError(f"{problem}: must be relative to data.root")
    return template


def _fill(template: str, **fields: Any) -> str:
    """``template`` with its fields filled; a format spec that does not fit a value is named as the template's."""
    try:
        return template.format(**fields)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.video_template {template!r}: {err}") from None


def _whole(value: Any) -> int:
    """An integer id from JSON: an int or a string of digits (COIN writes both); anything else is a ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"expected an integer id, got {value!r}")


def _name(value: Any, key: str) -> str:
    """A non-empty string field of an annotation entry; anything else is a ValueError naming ``key``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _template_regex(template: str, fields: dict[str, str]) -> re.Pattern[str]:
    """Regex of a path template; a field used twice must match the same text."""
    parts, seen = [], set()
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{fields[name]})")
            seen.add(name)
    return re.compile("".join(parts))


def _breakfast_labels(video: Path) -> Path | None:
    """The coarse ``.labels`` file beside ``video``: ``P03_cereals.avi.labels``, else ``P03_cereals.labels``; a
    folder by that name is a ``DataError`` (read as "no labels", the video would train without its steps)."""
    for candidate in (video.with_name(video.name + ".labels"), video.with_suffix(".labels")):
        if candidate.is_dir():
            raise DataError(f"{candidate}: a folder where the coarse .labels file of {video.name} should be")
        if candidate.is_file():
            return candidate
    return None


def _read_segments(path: Path) -> list[int]:
    """Action indices of a ``.labels`` file (lines ``55-233 pour_cereals``), in order of first appearance."""
    index = {name: i for i, name in enumerate(BREAKFAST_ACTIONS)}
    found: list[int] = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(\d+)-(\d+)\s+(\S+)\s*", line)
        if not match or int(match[1]) > int(match[2]):
            raise DataError(f"{path}:{number}: expected 'START-END action', got {line!r}")
        if match[3] not in index:
            raise DataError(f"{path}:{number}: unknown Breakfast action {match[3]!r}")
        if index[match[3]] not in found:
            found.append(index[match[3]])
    return found


def read_breakfast(root: Path, video_template: str | None = None, annotations: str | None = None) -> VideoSet:
    """Breakfast: videos ``P03/cam01/P03_cereals.avi`` with coarse ``.labels`` beside them.

    Class = the activity in the file name (10), split by person (P03-P46 train, P47-P54 test),
    auxiliary texts = the 48 atomic actions, steps = the actions present in the ``.labels`` file.
    A ``.labels`` file without its video gives a record whose file is missing.
    """
    if annotations:
        raise DataError("data.annotations is not used by breakfast (the .labels files sit beside the videos)")
    template = check_template(video_template or BREAKFAST_TEMPLATE, ("person", "camera", "activity"),
                              required=("person", "activity"), plain=True)
    fields = {"person": r"P\d+", "camera": r"[^/]+", "activity": "|".join(BREAKFAST_ACTIVITIES)}
    pattern, wildcard = _template_regex(template, fields), re.sub(r"\{\w+\}", "*", template)
    candidates = set(root.glob(wildcard))
    candidates |= {p.with_name(p.name[: -len(".labels")]) for p in root.glob(wildcard + ".labels")}
    candidates |= {p.with_suffix(Path(template).suffix) for p in root.glob(str(Path(wildcard).with_suffix(".labels")))}
    activities = list(BREAKFAST_ACTIVITIES)
    records = []
    for video in sorted(candidates):
        match = pattern.fullmatch(video.relative_to(root).as_posix())
        if not match:
            continue
        person = int(match["person"][1:])
        split = "train" if person in BREAKFAST_TRAIN else "test" if person in BREAKFAST_TEST else None
        labels = _breakfast_labels(video)
        steps = _read_segments(labels) if labels else []
        records.append(VideoRecord(video, activities.index(match["activity"]), steps, split))
    if not records:
        raise DataError(f"no Breakfast videos matching {template!r} under {root}")
    labels = LabelSet(list(BREAKFAST_ACTIVITIES.values()), [action_text(a) for a in BREAKFAST_ACTIONS])
    return VideoSet(labels, records, str(root))


def read_coin(root: Path, video_template: str | None = None, annotations: str | None = None) -> VideoSet:
    """COIN: ``COIN.json`` (``database`` -> id -> ``recipe_type``, ``class``, ``subset``, ``annotation``).

    Classes are the tasks ordered by ``recipe_type``; auxiliary texts the step labels ordered by step
    ``id``; ``training`` -> train, ``validation`` and ``testing`` -> test. Template fields: ``{id}``,
    ``{recipe_type}``, ``{class}``, ``{subset}``.
    """
    path = Path(annotations) if annotations else root / "COIN.json"
    if not path.is_file():
        raise FileNotFoundError(f"COIN annotations not found: {path}")
    coin = read_json(path)
    database = coin.get("database") if isinstance(coin, dict) else None
    if not isinstance(database, dict):
        raise DataError(f"{path}: expected a top-level 'database' mapping")
    tasks: dict[int, str] = {}
    steps: dict[int, str] = {}
    for vid, entry in database.items():
        try:
            named = [(tasks, _whole(entry["recipe_type"]), _name(entry["class"], "class"))]
            named += [(steps, _whole(s["id"]), _name(s["label"], "label")) for s in entry.get("annotation") or []]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"{path}: video {vid!r}: malformed entry ({err!r})") from err
        for table, key, name in named:
            if table.setdefault(key, name) != name:
                raise DataError(f"{path}: video {vid!r}: id {key} is both {table[key]!r} and {name!r}")
    for kind, table in (("class", tasks), ("step label", steps)):
        twice = repeated([table[k] for k in sorted(table)])
        if twice is not None:  # two ids, one text: the model could not tell them apart
            raise DataError(f"{path}: {kind} {twice!r} belongs to two different ids")
    class_index = {key: i for i, key in enumerate(sorted(tasks))}
    step_index = {key: i for i, key in enumerate(sorted(steps))}
    template = check_template(video_template or COIN_TEMPLATE, ("id", "recipe_type", "class", "subset"))
    records = []
    for vid, entry in sorted(database.items()):
        subset = entry.get("subset")
        if not isinstance(subset, str) or subset not in COIN_SUBSETS:
            raise DataError(f"{path}: video {vid!r}: subset {subset!r} not in {list(COIN_SUBSETS)}")
        recipe = _whole(entry["recipe_type"])
        video = root / _fill(template, id=vid, recipe_type=recipe, **{"class": entry["class"]}, subset=subset)
        present = sorted({step_index[_whole(s["id"])] for s in entry.get("annotation") or []})
        records.append(VideoRecord(video, class_index[recipe], present, COIN_SUBSETS[subset]))
    labels = LabelSet([tasks[k] for k in sorted(tasks)], [steps[k] for k in sorted(steps)])
    return VideoSet(labels, records, str(path))


def read_charades(root: Path, video_template: str | None = None, annotations: str | None = None) -> VideoSet:
    """Charades: ``Charades_v1_{train,test}.csv`` (``actions`` = ``cNNN start end;...``) and
    ``Charades_v1_classes.txt`` (``c000 Holding some clothes``); multi-label over the 157 classes.

    ``annotations`` is the folder of those files (default ``root``); template field ``{id}``.
    """
    folder = Path(annotations) if annotations else root
    class_file = folder / CHARADES_FILES[0]
    if not class_file.is_file():
        raise FileNotFoundError(f"Charades classes not found: {class_file}")
    codes, classes = {}, []
    for number, line in enumerate(read_text(class_file).splitlines(), 1):
        if line.strip():
            code, _, name = line.strip().partition(" ")
            if not re.fullmatch(r"c\d{3}", code) or not name:
                raise DataError(f"{class_file}:{number}: expected 'cNNN class name', got {line!r}")
            if code in codes or name.strip() in classes:
                raise DataError(f"{class_file}:{number}: {code if code in codes else name.strip()!r} is listed twice")
            codes[code] = len(classes)
            classes.append(name.strip())
    template = check_template(video_template or CHARADES_TEMPLATE, ("id",))
    records = []
    for split in ("train", "test"):
        table = folder / f"Charades_v1_{split}.csv"
        if not table.is_file():
            raise FileNotFoundError(f"Charades annotations not found: {table}")
        try:
            records += _charades_rows(table, split, codes, root, template)
        except UnicodeDecodeError as err:
            raise DataError(f"{table}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
        except csv.Error as err:
            raise DataError(f"{table}: not a readable CSV file: {err}") from None
    return VideoSet(LabelSet(classes), records, str(folder), multilabel=True)


def _charades_rows(table: Path, split: str, codes: dict[str, int], root: Path, template: str) -> list[VideoRecord]:
    """The videos of one Charades CSV (``id``, ``actions`` columns; a leading BOM dropped)."""
    records = []
    with table.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"id", "actions"} <= set(reader.fieldnames or []):
            raise DataError(f"{table}:1: missing the 'id' and 'actions' columns")
        for row in reader:
            if None in row or None in row.values():
                raise DataError(f"{table}:{reader.line_num}: expected {len(reader.fieldnames or [])} fields")
            target = set()
            for action in filter(None, (a.strip() for a in row["actions"].split(";"))):
                code = action.split()[0]
                if code not in codes or len(action.split()) != 3:
                    raise DataError(f"{table}:{reader.line_num}: bad action {action!r}")
                target.add(codes[code])
            records.append(VideoRecord(root / _fill(template, id=row["id"]), sorted(target), [], split))
    return records


READERS: dict[str, Callable[[Path, str | None, str | None], VideoSet]] = {
    "breakfast": read_breakfast, "coin": read_coin, "charades": read_charades,
}

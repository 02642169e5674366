"""Named threshold profiles: an operator's own threshold for a model version, saved by
``POST /calibrate`` and applied with ``profile=NAME``.

    store = ProfileStore(settings.data_dir / "profiles")
    store.save(profile)              # data_dir/profiles/<model>/<name>.json, atomically
    store.get("mnist", "night-shift")

One JSON file per profile, written to a temporary file and renamed over the old one
(``os.replace`` is atomic on POSIX), so a crash or a concurrent reader never sees half a file
and profiles survive a restart. The file records the model version it was measured on: a
threshold is a distance, meaningless for other weights, so it is never applied to another
version (the caller answers 409).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from app.artifact import ThresholdRate

logger = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)


class Profile(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    model: str
    model_version: str = Field(description="The model version the pairs were measured with")
    threshold: float = Field(gt=0, description="A distance: at or below means same")
    far: float = Field(ge=0, le=1, description="False-accept rate at threshold on the pairs")
    frr: float = Field(ge=0, le=1, description="False-reject rate at threshold on the pairs")
    auc: float
    eer: float
    pairs: int
    table: list[ThresholdRate] = Field(default_factory=list)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class ProfileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()  # one writer at a time per process; renames keep readers safe

    def _path(self, model: str, name: str) -> Path:
        if not _NAME.match(name) or not _NAME.match(model):
            raise ValueError(f"invalid profile or model name {name!r}")
        return self.root / model / f"{name}.json"

    def save(self, profile: Profile) -> None:
        path = self._path(profile.model, profile.name)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{profile.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(profile.model_dump_json(indent=2) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def get(self, model: str, name: str) -> Profile | None:
        try:
            path = self._path(model, name)
        except ValueError:
            return None
        return _read(path)

    def list(self, model: str) -> list[Profile]:
        folder = self.root / model
        if not _NAME.match(model) or not folder.is_dir():
            return []
        found = (_read(p) for p in sorted(folder.glob("*.json")))
        return [p for p in found if p is not None]

    def delete(self, model: str, name: str) -> bool:
        try:
            path = self._path(model, name)
        except ValueError:
            return False
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        return True


def _read(path: Path) -> Profile | None:
    try:
        return Profile.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as e:  # a damaged file must not take the route down
        logger.warning("ignoring unreadable profile %s: %s", path, e)
        return None

"""Where imports may read and write: only under the ``--s3-root`` folder.

An import URI names a folder under the root: ``s3://bucket/key`` is ``ROOT/bucket/key``; a local
folder (an absolute path, a ``file:///`` URI, or ``s3://local-folder/<absolute path>`` as job
properties report one [I]) is accepted when it lies under the root. Refused, before a job exists:

- any import when the emulator has no root (ValidationException: start it with ``--s3-root``);
- a ``..`` path segment (ValidationException), so that no URI climbs out by its spelling;
- a URI whose folder, once symbolic links are resolved, is outside the root (AccessDeniedException).

While a job runs, a file that is a symbolic link to outside the root is rejected rather than read, and
the job output is written only into folders that resolve under the root, never through a link.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from healthimaging_emulator.exceptions import AccessDeniedException, ValidationException

#: How job properties show a local import folder, whose URI the model requires to be ``s3://…`` [I].
LOCAL_FOLDER_PREFIX = "s3://local-folder/"


def _has_parent_segment(path: str) -> bool:
    return ".." in path.split("/")


def no_root_refusal(uri: str, member: str) -> ValidationException:
    """The refusal of any import by an emulator started without ``--s3-root``."""
    return ValidationException(
        f"Cannot import with {member} {uri!r}: the emulator was started without --s3-root, and imports read and "
        "write only under that folder. Start it with --s3-root DIR and put the files in DIR/bucket/key "
        "(s3://bucket/key), or in a local folder under DIR."
    )


@dataclass(frozen=True)
class ImportRoot:
    """The ``--s3-root`` folder (resolved) and the rules that keep imports inside it."""

    root: Path

    @classmethod
    def of(cls, folder: str | Path) -> ImportRoot:
        """The root for ``folder``, resolved once (it may itself be reached through a symbolic link)."""
        return cls(Path(folder).expanduser().resolve())

    def contains(self, path: Path) -> bool:
        """Whether ``path`` (already resolved) is the root or lies under it."""
        return path == self.root or self.root in path.parents

    def _candidate(self, uri: str, member: str) -> Path:
        """The path a URI names, before symbolic links are resolved."""
        if uri.startswith("s3://") and not uri.startswith(LOCAL_FOLDER_PREFIX):
            return self.root / uri[len("s3://") :].lstrip("/")
        if uri.startswith(LOCAL_FOLDER_PREFIX):
            local = "/" + uri[len(LOCAL_FOLDER_PREFIX) :]
        elif uri.startswith("file://"):
            local = uri[len("file://") :]
            if not local.startswith("/"):
                raise ValidationException(
                    f"{member} {uri!r} is not a file:///absolute/path URI; give a folder under --s3-root {self.root}."
                )
        elif uri.startswith("/"):
            local = uri
        else:
            raise ValidationException(
                f"{member} {uri!r} is neither s3://bucket/key nor a local folder; "
                f"give s3://bucket/key (read from {self.root}/bucket/key)."
            )
        return Path(local)

    def resolve(self, uri: str, member: str) -> Path:
        """The folder under the root that ``uri`` names, symbolic links resolved; raises ValidationException for a
        ``..`` segment or a malformed URI and AccessDeniedException for a folder outside the root."""
        if _has_parent_segment(uri):
            raise ValidationException(
                f"{member} {uri!r} has a '..' path segment; the emulator refuses them so that imports stay under "
                f"--s3-root {self.root}. Name the folder without '..'."
            )
        candidate = self._candidate(uri, member)
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL byte
            raise ValidationException(f"{member} {uri!r} does not name a usable folder: {exc}") from None
        if not self.contains(resolved):
            raise AccessDeniedException(
                f"{member} {uri!r} is {resolved}, outside --s3-root {self.root}; the emulator reads and writes imports "
                f"only under it (symbolic links included). Put the files under {self.root} (s3://bucket/key is "
                f"{self.root}/bucket/key)."
            )
        return resolved

    def files_under(self, folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
        """The regular files under ``folder`` that may be read, and (path, reason) of those that may not.

        Linked folders are not descended into; a linked file is read only if it resolves under the root.
        """
        files: list[str] = []
        rejected: list[tuple[str, str]] = []
        for directory, _, names in os.walk(folder, followlinks=False):
            for name in names:
                path = Path(directory) / name
                if path.is_symlink() and not self.contains(path.resolve()):
                    rejected.append(
                        (str(path), f"{path} is a symbolic link to outside --s3-root {self.root}; not read.")
                    )
                elif path.is_file():  # not a FIFO or device, which would block or never end
                    files.append(str(path))
        return sorted(files), sorted(rejected)

    def output_folder(self, folder: Path) -> Path:
        """``folder`` created, checked to resolve under the root (a link put there after the job started)."""
        folder.mkdir(parents=True, exist_ok=True)
        resolved = folder.resolve()
        if not self.contains(resolved):
            raise AccessDeniedException(f"The job output folder {folder} is {resolved}, outside --s3-root {self.root}.")
        return resolved


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, refusing to follow a symbolic link put there in place of the file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)

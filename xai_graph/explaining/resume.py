"""Reruns continue where an earlier run stopped, for either engine.

Each record carries the `source` fingerprint of its image (size and modification time, in nanoseconds). A rerun
into the same folder without `--overwrite` skips an image whose record has no error, whose fingerprint matches
the image as it is now and whose files all still exist; everything else (new images, changed images, failures,
records of runs before fingerprints, deleted files) is explained again. `--overwrite` redoes every image.

Size + mtime rather than a content hash: hashing would read every image of a dataset once more on each rerun
(from object storage, for URIs), which is what resuming is meant to avoid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from xai_graph.explaining.gallery import ResultWriter
from xai_graph.explaining.sources import Source, fingerprints


def is_done(record: dict | None, fingerprint: dict | None, file_exists) -> bool:
    """Whether `record` explains the image whose fingerprint is given, with every file it lists still there."""
    if not record or record.get("error") or fingerprint is None:
        return False
    return record.get("source") == fingerprint and all(file_exists(name) for name in record.get("files", []))


class ResumableWriter(ResultWriter):
    """A ResultWriter that records each image's fingerprint and says which images an earlier run already did.

    It also writes results encoded elsewhere (`add_encoded`: the Ray engine's actors render and encode, the
    driver writes), through the same claims, overwrite rules and journal as `add`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sources: dict[str, dict | None] = {}

    def plan(self, sources: Sequence[Source]) -> tuple[list[Source], int]:
        """(the sources to explain, how many are skipped as already explained)."""
        self.sources.update(fingerprints(list(sources)))
        if self.overwrite:
            return list(sources), 0
        todo = [
            s
            for s in sources
            if not is_done(
                self.records.get(str(s)), self.sources.get(str(s)), lambda name: (self.root / name).is_file()
            )
        ]
        return todo, len(sources) - len(todo)

    def _keep(self, record: dict) -> None:
        fingerprint = self.sources.get(record["image"])
        if fingerprint is not None:
            record["source"] = fingerprint
        super()._keep(record)

    def add_encoded(self, record: dict, files: Iterable[tuple[str, bytes]]) -> dict:
        """Write files encoded elsewhere (name, bytes) and keep their record, with the names each file got
        (`name-1.png` where the name is taken, as `add` does). All or nothing, as `add`."""
        written: dict[str, str] = {}
        try:
            for name, data in files:
                written[name] = self._write(name, data)
        except BaseException:
            for name in written.values():
                with contextlib.suppress(OSError):
                    (self.root / name).unlink()
            raise
        record = {**record, "files": [written[name] for name in record["files"]]}
        if "overlays" in record:
            record["overlays"] = [{**o, "file": written[o["file"]]} for o in record["overlays"]]
        self._keep(record)
        return record

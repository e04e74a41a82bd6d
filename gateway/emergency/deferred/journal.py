"""The local journal: deferred items fsynced to disk while the ledger is unreachable.

Each process appends to its own segment file and holds an exclusive lock on it for its life. A
segment whose lock can be taken belongs to no running process (closed by rotation, or left by a
process that was killed) and may be drained into the ledger; draining inserts by (institution,
msgid), so a segment drained twice (a crash between insert and unlink) adds nothing twice.

Records are JSON lines. A record is acknowledged only after its line is on disk (fsync), so a
torn last line after kill -9 belongs to a request that was never answered: it is skipped. A
complete line that cannot be read is another matter: an acknowledged claim whose record the
disk damaged. Its segment is never deleted (the drain keeps it as `<name>.damaged`, `KEPT`),
and what can still be made out of the line (institution, msgid) is handed back, so that a
retry of that msgid is refused instead of settled as new (the patient has paid in cash).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, NamedTuple

from gateway.ledger.deferred import Entry, Held

log = logging.getLogger("gateway.journal")
SUFFIX = ".journal"
KEPT = ".damaged"  # a drained segment that held unreadable records, kept for the team


class Damaged(NamedTuple):
    """A complete record that could not be read: where, and what of it can be made out."""

    segment: str
    line: int
    fixmedins_code: str | None
    msgid: str | None
    infno: str | None


def _legible(line: bytes, key: str) -> str | None:
    """A text field of a damaged record, where its bytes still read as the encoder wrote it."""
    found = re.search(rb'"' + key.encode() + rb'":"([0-9A-Za-z_.-]{1,40})"', line)
    return found.group(1).decode() if found else None


def _encode(e: Entry) -> bytes:
    doc = {
        "kind": e.kind,
        "fixmedins_code": e.fixmedins_code,
        "msgid": e.msgid,
        "infno": e.infno,
        "psn_no": e.psn_no,
        "mdtrt_id": e.mdtrt_id,
        "service_date": e.service_date.isoformat(),
        "medfee_sumamt": e.medfee_sumamt,
        "body": base64.b64encode(e.body).decode(),
        "answer": base64.b64encode(e.answer).decode(),
        "received_at": e.received_at.isoformat(),
        "claim_id": e.claim_id,
        "provisional_id": e.provisional_id,
        "digest": e.digest.hex(),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> Entry:
    d: dict[str, Any] = json.loads(line)
    return Entry(
        kind=d["kind"],
        fixmedins_code=d["fixmedins_code"],
        msgid=d["msgid"],
        infno=d["infno"],
        psn_no=d["psn_no"],
        mdtrt_id=d["mdtrt_id"],
        service_date=dt.date.fromisoformat(d["service_date"]),
        medfee_sumamt=int(d["medfee_sumamt"]),
        body=base64.b64decode(d["body"]),
        answer=base64.b64decode(d["answer"]),
        received_at=dt.datetime.fromisoformat(d["received_at"]),
        claim_id=d.get("claim_id"),
        provisional_id=d.get("provisional_id"),
        digest=bytes.fromhex(d.get("digest", "")),
    )


def read_segment(
    path: Path, damaged: list[Damaged] | None = None, *, quiet: bool = False
) -> Iterator[Entry]:
    """The complete records of a segment. A torn last line (never acknowledged) is skipped; a
    complete line that cannot be read is logged and told to `damaged` (`quiet`: read only to
    count, nothing logged: the drain says it)."""
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                if not quiet:
                    log.warning(
                        "torn journal record skipped", extra={"segment": path.name, "line": n}
                    )
                continue
            try:
                yield _decode(line)
            except (ValueError, KeyError, TypeError):
                if quiet:
                    continue
                log.error("unreadable journal record", extra={"segment": path.name, "line": n})
                if damaged is not None:
                    damaged.append(
                        Damaged(
                            path.name,
                            n,
                            _legible(line, "fixmedins_code"),
                            _legible(line, "msgid"),
                            _legible(line, "infno"),
                        )
                    )


def held_elsewhere(directory: Path) -> list[Path]:
    """Segments in `directory` that a running process holds open, with records in them: what a
    serving gateway took while the ledger was away and has not drained yet (it drains them
    within seconds of the ledger answering)."""
    if not directory.is_dir():
        return []
    held: list[Path] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            if path.stat().st_size == 0:
                continue
            with path.open("rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    held.append(path)
        except FileNotFoundError:
            continue  # drained and removed meanwhile
    return held


def _refs(e: Entry) -> tuple[tuple[str, str], ...]:
    """The visit and the claim an entry names, by institution (nothing for a withdrawal: the
    claim it withdraws is named by that claim's entry)."""
    if e.kind == "withdrawal":
        return ()
    return tuple((e.fixmedins_code, ref) for ref in (e.mdtrt_id, e.claim_id) if ref)


class Journal:
    """This process's segment, and the index of what it holds (for retries of the same msgid)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = asyncio.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self.answers: dict[tuple[str, str], bytes] = {}  # (institution, msgid) -> answer
        self.digests: dict[tuple[str, str], bytes] = {}  # the body each answer was given to
        self.claims: dict[str, Entry] = {}  # claim_id -> entry, for withdrawals
        self.withdrawn: set[str] = set()
        # claim_id -> (institution, mdtrt_id, lines) of claims pending here: a second claim of
        # the same lines is refused while the ledger cannot be asked.
        self._held: dict[str, tuple[str, str, Held]] = {}
        # Segments no process holds: (size, claim ids) as last counted (unheld_claims).
        self._unheld: dict[Path, tuple[int, frozenset[str]]] = {}
        # Other processes' segments: the (institution, msgid) keys whose answers were adopted
        # from each, and how far each has been read (adopt_siblings).
        self._adopted: dict[Path, set[tuple[str, str]]] = {}
        self._read_to: dict[Path, int] = {}
        # Whether another process's segment was in the directory when last looked (each
        # writing request then reads them first: dispatch._held_in_journals).
        self.siblings = False
        self._adopting = threading.Lock()  # requests and the watcher read them in threads
        # What the journals hold, not yet drained, names: (institution, mdtrt_id or claim id),
        # this process's own counted, each sibling segment's by its path. A request the ledger
        # would answer without them (a settlement of a visit whose fees are journaled, the
        # withdrawal of a journaled claim) waits for the drain (`pending`).
        self._own_refs: dict[tuple[str, str], int] = {}
        self._sibling_refs: dict[Path, set[tuple[str, str]]] = {}
        self._listed_at: int | None = None  # the directory's mtime when last listed
        # What this process appended, by segment: a rotated segment may be drained by another
        # process, and what it held is then forgotten here (`forget_drained_elsewhere`).
        self._own_segments: dict[Path, list[Entry]] = {}

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
            self._path = self.directory / name
            f = self._path.open("ab")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file = f
            # The new name must survive a crash too.
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return self._file

    def _write(self, record: bytes) -> None:
        f = self._open()
        f.write(record)
        f.flush()
        os.fsync(f.fileno())

    async def append(self, e: Entry) -> None:
        """Durable on return: only then may the request be answered."""
        record = _encode(e)
        async with self._lock:
            await asyncio.to_thread(self._write, record)
            assert self._path is not None  # the segment just written
            # Without its body: forgetting needs the keys, and an upload's body is megabytes.
            kept = dataclasses.replace(e, body=b"") if e.kind == "call" else e
            self._own_segments.setdefault(self._path, []).append(kept)
        self.answers[(e.fixmedins_code, e.msgid)] = e.answer
        self.digests[(e.fixmedins_code, e.msgid)] = e.digest
        if e.kind == "claim" and e.claim_id:
            self.claims[e.claim_id] = e
        if e.kind == "withdrawal" and e.claim_id:
            self.withdrawn.add(e.claim_id)
        for ref in _refs(e):
            self._own_refs[ref] = self._own_refs.get(ref, 0) + 1

    @property
    def names_anything(self) -> bool:
        """Whether any segment holds a visit's or claim's entry not yet drained (`pending`)."""
        return bool(self._own_refs) or any(self._sibling_refs.values())

    def pending(self, fixmedins_code: str, refs: tuple[str, ...]) -> bool:
        """Whether a journal segment, this process's or another's, holds an entry not yet
        drained that names one of these visits or claims of the institution."""
        for ref in refs:
            key = (fixmedins_code, ref)
            if key in self._own_refs or any(key in held for held in self._sibling_refs.values()):
                return True
        return False

    def held_on(self, fixmedins_code: str, mdtrt_id: str) -> list[Held]:
        """What this process's pending claims of the visit cover."""
        return [
            h
            for code, visit, h in self._held.values()
            if (code, visit) == (fixmedins_code, mdtrt_id)
        ]

    def hold(self, held: Held, fixmedins_code: str, mdtrt_id: str) -> None:
        """Mark the claim's lines taken; before the write, so a concurrent claim sees them."""
        self._held[held.claim_id] = (fixmedins_code, mdtrt_id, held)

    def let_go(self, claim_id: str) -> None:
        """The claim was withdrawn, never written, or is in the ledger now (which answers)."""
        self._held.pop(claim_id, None)

    def answered(self, fixmedins_code: str, msgid: str) -> tuple[bytes, bytes] | None:
        """(body digest, answer) of a msgid this process answered from the journal."""
        key = (fixmedins_code, msgid)
        answer = self.answers.get(key)
        return None if answer is None else (self.digests.get(key, b""), answer)

    @property
    def holds_anything(self) -> bool:
        return bool(self.answers)

    @property
    def claims_waiting(self) -> int:
        """Claims journaled here, not withdrawn, and not yet drained into the ledger."""
        return len(self.claims.keys() - self.withdrawn)

    async def rotate(self) -> None:
        """Close the current segment so that it can be drained; the next append opens another."""
        async with self._lock:
            if self._file is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
                self._file.close()
                self._file = None

    def forget(self, entries: list[Entry]) -> None:
        """These are in the ledger now: retries find their answers in its msgid journal."""
        for e in entries:
            self.answers.pop((e.fixmedins_code, e.msgid), None)
            self.digests.pop((e.fixmedins_code, e.msgid), None)
            for ref in _refs(e):
                left = self._own_refs.pop(ref, 0) - 1
                if left > 0:
                    self._own_refs[ref] = left
            if e.claim_id:
                self.claims.pop(e.claim_id, None)
                self.withdrawn.discard(e.claim_id)
                self.let_go(e.claim_id)

    def drained(self, path: Path, entries: list[Entry]) -> None:
        """The segment at `path` is in the ledger now (deleted, or kept as damaged): its entries
        forgotten, once. This process's own segment is forgotten by what it appended there."""
        own = self._own_segments.pop(path, None)
        self.forget(entries if own is None else own)

    def forget_drained_elsewhere(self) -> None:
        """Forget this process's rotated segments that another process drained. Found from
        outside: with two workers, one drained the other's rotated segment, and the other went
        on counting its claims as waiting for good (the alert on waiting claims never cleared),
        holding their visits as pending and draining again every half second."""
        current = self._path if self._file is not None else None
        for path in [p for p in self._own_segments if p != current and not p.exists()]:
            self.forget(self._own_segments.pop(path))

    def drainable(self) -> list[tuple[Path, IO[bytes]]]:
        """Segments no running process holds, each locked for the caller; oldest first."""
        if not self.directory.exists():
            return []
        out: list[tuple[Path, IO[bytes]]] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime):
            if path == self._path and self._file is not None:
                continue
            f = path.open("rb")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            out.append((path, f))
        return out

    def unheld_claims(self) -> frozenset[str]:
        """The claims, not withdrawn, in the segments no running process holds (a killed
        worker's, until one drains them; this process's own once rotated, which `claims` still
        counts). Read from disk: call it off the event loop. A segment no longer grows, so what
        it holds is kept by its size."""
        found: set[str] = set()
        seen: set[Path] = set()
        for path, handle in self.drainable():
            try:
                size = os.fstat(handle.fileno()).st_size
                known = self._unheld.get(path)
                if known is None or known[0] != size:
                    claims: set[str] = set()
                    withdrawn: set[str] = set()
                    for e in read_segment(path, quiet=True):
                        if e.claim_id and e.kind == "claim":
                            claims.add(e.claim_id)
                        elif e.claim_id and e.kind == "withdrawal":
                            withdrawn.add(e.claim_id)
                    known = self._unheld[path] = (size, frozenset(claims - withdrawn))
            finally:
                handle.close()
            seen.add(path)
            found |= known[1]
        for gone in self._unheld.keys() - seen:
            del self._unheld[gone]
        return frozenset(found)

    def listing_changed(self) -> bool:
        """Whether a segment appeared in (or left) the directory since it was last listed: one
        stat, cheap enough for every writing request (a sibling's first claim is answered
        beside it before the watcher has looked)."""
        try:
            listed = os.stat(self.directory).st_mtime_ns
        except OSError:
            return False  # no directory: no segment anywhere
        if listed == self._listed_at:
            return False
        self._listed_at = listed
        return True

    def adopt_siblings(self) -> None:
        """The answers in every other segment of the directory, a live process's or a dead
        one's, answered by this process too until the segment is gone (drained): read from
        where each was read last, complete lines only. Read from disk: call it off the event
        loop.

        Found from outside, twice: a gateway restarted after kill -9 served before it had
        drained the dead process's segment, and a worker the supervisor started in place of a
        killed one met its live sibling's claims, not yet drained, as new requests; in both the
        tills' retries of acknowledged claims (the patients had paid in cash) were settled again,
        for real, and a journaled registration registered again, its claim then failing."""
        with self._adopting:
            self._adopt_siblings()

    def _adopt_siblings(self) -> None:
        if not self.directory.exists():
            self.siblings = False
            return
        own = self._path if self._file is not None else None
        present: set[Path] = set()
        for path in self.directory.glob(f"*{SUFFIX}"):
            if path == own:
                continue
            present.add(path)
            start = self._read_to.get(path, 0)
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
            adopted = self._adopted.setdefault(path, set())
            named = self._sibling_refs.setdefault(path, set())
            for line in chunk[:end].splitlines():
                try:
                    e = _decode(line)
                except (ValueError, KeyError, TypeError):
                    continue  # the drain tells of it
                named.update(_refs(e))
                key = (e.fixmedins_code, e.msgid)
                if key not in self.answers:
                    self.answers[key] = e.answer
                    self.digests[key] = e.digest
                    adopted.add(key)
            self._read_to[path] = start + end
        self.siblings = bool(present)
        for gone in [p for p in self._adopted if p not in present and not p.exists()]:
            # Drained (by this process, whose drain forgot them already, or by another): the
            # ledger answers their retries now.
            self._read_to.pop(gone, None)
            self._sibling_refs.pop(gone, None)
            for key in self._adopted.pop(gone):
                self.answers.pop(key, None)
                self.digests.pop(key, None)

    def drainable_exists(self) -> bool:
        """Cheap check before a drain: segments other than this process's open one."""
        if not self.directory.exists():
            return False
        own = self._path if self._file is not None else None
        return any(p != own for p in self.directory.glob(f"*{SUFFIX}"))

    def close(self) -> None:
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
            self._file = None

"""Exchanged files (文件上传/下载): a reconciliation's detail uploads and result files, kept
for download under a query number."""

from __future__ import annotations

import datetime as dt

import asyncpg


async def new_file_no(conn: asyncpg.Connection, on: dt.datetime) -> str:
    """Draws a file query number: F + yyyyMMdd + serial."""
    serial = await conn.fetchval("SELECT nextval('file_seq')")
    return f"F{on:%Y%m%d}{int(serial):010d}"


async def store_file(
    conn: asyncpg.Connection,
    *,
    fixmedins_code: str,
    filename: str,
    kind: str,
    content: bytes,
    now: dt.datetime,
) -> tuple[str, dt.datetime]:
    """Writes a file kept for 7 days; returns its query number and download deadline."""
    file_no = await new_file_no(conn, now)
    deadline = (now + dt.timedelta(days=7)).replace(microsecond=0)
    await conn.execute(
        "INSERT INTO exchange_files (file_qury_no, fixmedins_code, filename, kind, content, created_at, dld_endtime)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        file_no,
        fixmedins_code,
        filename,
        kind,
        content,
        now,
        deadline,
    )
    return file_no, deadline


async def load_file(
    conn: asyncpg.Connection, fixmedins_code: str, file_qury_no: str
) -> tuple[str, bytes] | None:
    """Reads the institution's own file (name, content), if it exists."""
    row = await conn.fetchrow(
        "SELECT filename, content FROM exchange_files WHERE file_qury_no = $1 AND fixmedins_code = $2",
        file_qury_no,
        fixmedins_code,
    )
    return None if row is None else (row["filename"], bytes(row["content"]))

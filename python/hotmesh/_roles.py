"""Login roles of an app (`hotmesh roles ...`): the owner-only SQL functions of
sql/80_roles.sql, called as the schema's owner. The database does the work; this only calls."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from hotmesh import errors

_STATEMENTS = {
    "create": "select {}.create_login(%s::text, %s::text)",
    "rotate": "select {}.rotate_login(%s::text)",
    "revoke": "select {}.revoke_login(%s::text)",
    "list": "select role_name, group_name, managed, connections from {}.list_logins()",
}


async def call(dsn: str, app_id: str, what: str, *params: str) -> list[dict[str, Any]]:
    """Run one of the role functions; its rows as dicts (one JSON object for a change)."""
    query = sql.SQL(_STATEMENTS[what]).format(sql.Identifier(app_id))
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows = await cur.fetchall()
    except psycopg.Error as error:
        if error.sqlstate and (error.sqlstate.startswith("HM") or error.sqlstate[:2] == "22"):
            raise errors.from_database(error) from error
        raise
    if what == "list":
        return rows
    return [next(iter(row.values())) for row in rows]

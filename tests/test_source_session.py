"""The source sessions cannot write and identify themselves to DBAs."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sources.postgres.session import APPLICATION_NAME, make_engine


def test_sessions_are_read_only_time_bounded_and_named(database: str) -> None:
    engine = make_engine(database, statement_timeout_ms=1234)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "1234ms"
        assert conn.execute(sa.text("SHOW application_name")).scalar() == APPLICATION_NAME
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            conn.execute(sa.text("CREATE TABLE should_fail (id int)"))
    engine.dispose()

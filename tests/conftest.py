"""Fixtures shared by the tests: a real SQLite file in tmp_path and the app under WebTest."""
import os
import sqlite3
import sys
from wsgiref.validate import validator

import pytest
import webtest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import receiver  # noqa: E402


@pytest.fixture
def db(tmp_path):
    """The path of a database file that does not exist yet, in a directory that does not."""
    return str(tmp_path / 'data' / 'messages.sqlite3')


@pytest.fixture
def make_client(db):
    """make_client(**settings) -> a WebTest client of make_app(db=db, **settings), lint on and
    wrapped in wsgiref.validate too; `extra_environ` sets the WSGI environ of every request."""
    def make(extra_environ=None, **settings):
        settings.setdefault('db', db)
        app = validator(receiver.make_app(**settings))
        environ = {'REMOTE_ADDR': '127.0.0.1'}
        environ.update(extra_environ or {})
        return webtest.TestApp(app, lint=True, extra_environ=environ)
    return make


@pytest.fixture
def client(make_client):
    """A client of the app with no token, no allowlist and no hook."""
    return make_client()


def rows(db):
    """Every stored message as a dict, in insertion order ([] when there is no database)."""
    if not os.path.exists(db):
        return []
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute('SELECT * FROM messages ORDER BY id')]
    finally:
        conn.close()


DONE = b'<Status>2</Status>'
RETRY = b'<Status>1</Status>'

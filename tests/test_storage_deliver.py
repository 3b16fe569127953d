"""storage.deliver tries the insert first and lets the UNIQUE constraint decide: a first
delivery is one INSERT, a refused one is a retry only when the guid is stored, and a NOT NULL
or CHECK failure of a new push still raises (on SQLite 3.7.17 too, whose wording differs)."""
import sqlite3

import pytest

import storage
from conftest import rows
from test_storage import push


@pytest.fixture
def conn(db):
    """A connection from storage.connect to a new database."""
    connection = storage.connect(db)
    yield connection
    connection.close()


def statements(conn, work):
    """The first word of each SQL statement SQLite runs during work()."""
    seen = []

    def trace(sql):     # a function: Python 3.6 keeps callbacks in a dict, by hash
        seen.append(sql)

    conn.set_trace_callback(trace)
    try:
        work()
    finally:
        conn.set_trace_callback(None)
    return [sql.split()[0].upper() for sql in seen]


def test_first_delivery_is_one_insert(conn):
    """A new guid costs BEGIN IMMEDIATE, one INSERT and COMMIT: no SELECT before it."""
    ran = statements(conn, lambda: storage.deliver(conn, push('g-new')))
    assert ran == ['BEGIN', 'INSERT', 'COMMIT']


def test_retry_refused_by_unique_is_counted(conn, db):
    """A guid the UNIQUE constraint refuses is a retry: counted, the first row returned."""
    assert storage.deliver(conn, push('g-1', message='first')) == ('done', None)
    action, first = storage.deliver(conn, push('g-1', message='again'))
    assert (action, first['message'], first['deliveries']) == ('done', 'first', 1)
    [row] = rows(db)
    assert (row['message'], row['deliveries']) == ('first', 2)
    assert not conn.in_transaction


@pytest.mark.parametrize('column, value', [('phone', None), ('message', None), ('phone', '')])
def test_bad_new_push_raises_beside_stored_rows(conn, db, column, value):
    """A NOT NULL or CHECK failure of a new guid raises, with other guids stored already."""
    storage.deliver(conn, push('g-stored'))
    with pytest.raises(sqlite3.IntegrityError):
        storage.deliver(conn, dict(push('g-new'), **{column: value}))
    assert not conn.in_transaction
    assert [row['guid'] for row in rows(db)] == ['g-stored']


def test_retry_of_stored_guid_is_counted_whatever_its_values(conn, db):
    """A retry is counted even with values the table would refuse: none of them is stored."""
    storage.deliver(conn, push('g-1', message='first'))
    action, first = storage.deliver(conn, dict(push('g-1'), phone=None, message=None))
    assert (action, first['message']) == ('done', 'first')
    [row] = rows(db)
    assert (row['phone'], row['message'], row['deliveries']) == ('0912345678', 'first', 2)


def test_hooked_first_delivery_claims_and_retry_sees_claim(conn):
    """With a hook, the first delivery inserts the row claimed ('run'); a retry during the
    claim is 'busy'."""
    assert storage.deliver(conn, push('g-h'), 60.0) == ('run', None)
    action, first = storage.deliver(conn, push('g-h'), 60.0)
    assert (action, first['state']) == ('busy', 'processing')

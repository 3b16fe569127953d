"""The same FiboSMS push receiver written the way a Flask user would write it: the peer that
bench/run.py measures receiver.py against under the same Apache mod_wsgi configuration.

Same semantics as receiver.py for the pushes the benchmark sends:

    GET or POST  /fibosms/<token>?guid=...&phone=...&message=...
    200 <Status>2</Status>  stored now, or stored already (a retry of a known guid)
    400 <Status>1</Status>  guid or phone missing
    403 <Status>1</Status>  wrong or missing token (compared in constant time)
    503 <Status>1</Status>  the database failed

and the same storage: one row per guid (UNIQUE), the same columns and indexes as storage.py,
the check and the insert (or the delivery count) in one BEGIN IMMEDIATE transaction,
PRAGMA synchronous=FULL (read back) and WAL. Settings come from the WSGI environ (Apache
SetEnv FIBOSMS_DB, FIBOSMS_TOKEN), as receiver.py reads them.

The connection follows Flask's documented pattern ("Using SQLite 3 with Flask"): opened on
first use in a request, kept in `g`, closed when the application context ends. The schema is
created once per process and database path.

Benchmark only: Flask is installed into bench/.venv, never into the project.
"""
import hmac
import os
import sqlite3
import time

from flask import Flask, Response, g, request

DONE = '<Status>2</Status>'
RETRY = '<Status>1</Status>'
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        id               INTEGER PRIMARY KEY,
        guid             TEXT NOT NULL UNIQUE CHECK (guid <> ''),
        phone            TEXT NOT NULL CHECK (phone <> ''),
        phone_normalised TEXT,
        message          TEXT NOT NULL,
        charset          TEXT NOT NULL,
        raw_query        TEXT NOT NULL,
        extra            TEXT NOT NULL DEFAULT '{}',
        remote_addr      TEXT,
        received_at      TEXT NOT NULL,
        deliveries       INTEGER NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
        last_delivery_at TEXT NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('processing', 'processed', 'failed')),
        claimed_until    REAL,
        hook_runs        INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        processed_at     TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS messages_state ON messages (state)",
    "CREATE INDEX IF NOT EXISTS messages_received_at ON messages (received_at)",
)
INSERT = """INSERT INTO messages (guid, phone, phone_normalised, message, charset, raw_query,
    extra, remote_addr, received_at, last_delivery_at, state, processed_at)
    VALUES (?, ?, ?, ?, 'utf-8', ?, '{}', ?, ?, ?, 'processed', ?)"""
COUNT_DELIVERY = """UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ?
    WHERE guid = ?"""

app = Flask(__name__)
application = app          # mod_wsgi looks for `application`
_schema_ready = set()      # database paths whose schema this process has created


def status(code):
    return Response(DONE if code == 200 else RETRY, status=code,
                    content_type='text/xml; charset=utf-8',
                    headers={'Cache-Control': 'no-store'})


def get_db():
    if 'db' not in g:
        path = request.environ.get('FIBOSMS_DB') or os.environ['FIBOSMS_DB']
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        conn.execute('PRAGMA synchronous = FULL')
        if conn.execute('PRAGMA synchronous').fetchone()[0] != 2:
            raise sqlite3.OperationalError('synchronous=FULL did not take')
        if conn.execute('PRAGMA journal_mode = WAL').fetchone()[0] != 'wal':
            raise sqlite3.OperationalError('journal_mode=WAL did not take')
        if path not in _schema_ready:
            for statement in SCHEMA:
                conn.execute(statement)
            _schema_ready.add(path)
        g.db = conn
    return g.db


@app.teardown_appcontext
def close_db(exc):
    conn = g.pop('db', None)
    if conn is not None:
        conn.close()


def utc_iso(t):
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)) + '.%03dZ' % (t * 1000 % 1000)


@app.route('/', defaults={'token': ''}, methods=['GET', 'POST'])
@app.route('/<token>', methods=['GET', 'POST'])
def push(token):
    secret = (request.environ.get('FIBOSMS_TOKEN') or os.environ.get('FIBOSMS_TOKEN') or '')
    if secret:
        offered = [token, request.values.get('token', '')]
        if not any(hmac.compare_digest(secret.encode(), o.encode()) for o in offered):
            app.logger.warning('403 wrong or missing token')
            return status(403)
    guid = request.values.get('guid', '').strip()
    phone = request.values.get('phone', '').strip()
    if not guid or not phone or len(guid) > 128 or len(phone) > 32:
        return status(400)
    message = request.values.get('message', '')
    digits = ''.join(c for c in phone if c.isdigit()) or None
    stamp = utc_iso(time.time())
    try:
        conn = get_db()
        conn.execute('BEGIN IMMEDIATE')
        try:
            row = conn.execute('SELECT id FROM messages WHERE guid = ?', (guid,)).fetchone()
            if row is None:
                conn.execute(INSERT, (guid, phone, digits, message,
                                      request.query_string.decode('latin-1'),
                                      request.remote_addr, stamp, stamp, stamp))
            else:
                conn.execute(COUNT_DELIVERY, (stamp, guid))
            conn.execute('COMMIT')
        except BaseException:
            if conn.in_transaction:
                conn.execute('ROLLBACK')
            raise
    except sqlite3.Error as exc:
        app.logger.error('503 storage failed: %s', exc)
        return status(503)
    return status(200)

#!/usr/bin/env python3
"""Durable SQLite storage for FiboSMS pushes, and the operator's command line.

One table, ``messages``, one row per SMS, keyed by the gateway's ``guid``::

    guid              TEXT NOT NULL UNIQUE  the gateway's id of the SMS
    phone             TEXT NOT NULL         the sender, as received (trimmed)
    phone_normalised  TEXT                  international digits: 84912345678
    message           TEXT NOT NULL         the SMS text ('' for an empty SMS)
    charset           TEXT NOT NULL         how the bytes were decoded: utf-8, cp1258, latin-1
    raw_query         TEXT NOT NULL         the query string (and POST body) as received,
                                            without the token; .encode('latin-1') gives the bytes
    extra             TEXT NOT NULL         other parameters, a JSON object
    remote_addr       TEXT                  the caller's address
    received_at       TEXT NOT NULL         first delivery, UTC, ISO 8601
    deliveries        INTEGER NOT NULL      how many times the gateway sent it
    last_delivery_at  TEXT NOT NULL         last delivery, UTC, ISO 8601
    state             TEXT NOT NULL         processing, processed or failed (the hook's state)
    claimed_until     REAL                  while 'processing': when the claim expires (Unix time)
    hook_runs         INTEGER NOT NULL      how many times the hook ran to an end
    last_error        TEXT                  the hook's last traceback
    processed_at      TEXT                  when the message was processed, UTC, ISO 8601

The duplicate rule: the first delivery of a guid inserts the row; every later one only counts
itself (``deliveries``, ``last_delivery_at``) and never overwrites what was stored first. The
check and the insert run in one ``BEGIN IMMEDIATE`` transaction, so two deliveries of one guid
cannot both insert, and the UNIQUE constraint is the last word if they ever tried.

Durability: a delivery is answered ``<Status>2</Status>`` only after its ``COMMIT`` returned
with ``PRAGMA synchronous=FULL`` (https://sqlite.org/pragma.html#pragma_synchronous). The
journal is WAL on local disks and the rollback journal on network filesystems, where WAL does
not work (https://sqlite.org/wal.html, "WAL does not work over a network filesystem").

SQLite 3.7.17 or newer: nothing here uses UPSERT, RETURNING or other later additions.

Command line (``python3 storage.py --help``)::

    python3 storage.py [--db PATH] list | show GUID | export --format csv|jsonl
                                   | stats | retry [--handler module:function] | check

``retry`` runs FIBOSMS_HANDLER's hook, or forwards (FIBOSMS_FORWARD_URL and _SECRET).
"""
import os
import sqlite3
import sys
import time

# -- Settings ---------------------------------------------------------------------------------

SCHEMA_VERSION = 1            # kept in PRAGMA user_version
BUSY_TIMEOUT = 5.0            # seconds to wait for another writer before giving up (answer 1)
CLAIM_SECONDS = 300.0         # a hook claim left behind by a crashed process expires after this
MIN_SQLITE = (3, 7, 17)       # the oldest SQLite this file is written for (CentOS 7)
JOURNAL_MODES = ('wal', 'delete', 'truncate', 'persist')
# Filesystem types (as /proc/mounts names them) on which WAL's shared memory does not work.
NETWORK_FILESYSTEMS = frozenset((
    'nfs', 'nfs4', 'cifs', 'smb3', 'smbfs', 'ncpfs', 'afs', '9p', 'ceph', 'glusterfs',
    'lustre', 'gpfs', 'fuse.sshfs', 'fuse.glusterfs', 'fuse.cephfs', 'davfs', 'fuse.s3fs',
))

# Migration N takes a database from user_version N to N + 1. Append, never edit.
MIGRATIONS = (
    (
        """CREATE TABLE messages (
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
            state            TEXT NOT NULL
                             CHECK (state IN ('processing', 'processed', 'failed')),
            claimed_until    REAL,
            hook_runs        INTEGER NOT NULL DEFAULT 0,
            last_error       TEXT,
            processed_at     TEXT
        )""",
        "CREATE INDEX messages_state ON messages (state)",
        "CREATE INDEX messages_received_at ON messages (received_at)",
    ),
)

SELECT_MESSAGE = "SELECT * FROM messages WHERE guid = ?"
# A plain INSERT, not INSERT OR IGNORE: OR IGNORE also skips NOT NULL and CHECK failures
# silently (https://sqlite.org/lang_conflict.html), and we would answer 2 for a lost message.
INSERT_MESSAGE = """INSERT INTO messages (guid, phone, phone_normalised, message, charset,
    raw_query, extra, remote_addr, received_at, last_delivery_at, state, claimed_until,
    processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
COUNT_DELIVERY = """UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ?
    WHERE guid = ?"""
CLAIM = "UPDATE messages SET state = 'processing', claimed_until = ? WHERE guid = ?"
MARK_PROCESSED = """UPDATE messages SET state = 'processed', claimed_until = NULL,
    last_error = NULL, hook_runs = hook_runs + 1, processed_at = ? WHERE guid = ?"""
MARK_FAILED = """UPDATE messages SET state = 'failed', claimed_until = NULL,
    last_error = ?, hook_runs = hook_runs + 1 WHERE guid = ?"""
SELECT_RETRYABLE = """SELECT guid FROM messages
    WHERE state = 'failed' OR (state = 'processing' AND claimed_until < ?) ORDER BY id"""


class StorageError(Exception):
    """The database cannot be used as this module requires (the reason is the message)."""


# -- Opening a database -----------------------------------------------------------------------

def default_path():
    """The default database: in the running user's home, never in the web root."""
    return os.path.join(os.path.expanduser('~'), '.fibosms', 'messages.sqlite3')


def connect(path, journal=None, timeout=BUSY_TIMEOUT, create=True):
    """Open `path` ready for use: durable settings checked, schema up to date.

    A new directory is made 0700 and a new file 0600 (SQLite gives its -wal, -shm and
    -journal files the database file's permissions). Each caller gets its own connection:
    a connection is never shared across threads or processes.
    """
    if journal is not None and journal not in JOURNAL_MODES:
        raise StorageError('journal mode %r is not one of %s'
                           % (journal, ', '.join(JOURNAL_MODES)))
    path = os.path.abspath(path)
    if not os.path.exists(path):
        if not create:
            raise StorageError('no database at %s' % path)
        create_file(path)
    if journal is None:
        journal = choose_journal(path)
    # isolation_level=None: no implicit transactions; we BEGIN and COMMIT ourselves.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        configure(conn, journal)
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def diagnose(path):
    """What the filesystem says is wrong for `path`, as '; ...' to add to an error, or ''.

    SQLite names neither a read-only filesystem ('unable to open database file') nor a full
    one ('disk I/O error' when its -shm file cannot grow), so the operator is told here.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fs = os.statvfs(directory)
    except OSError:
        return ''
    if fs.f_flag & os.ST_RDONLY:
        return '; the filesystem holding %s is read-only' % directory
    if fs.f_bavail * fs.f_frsize < 1 << 16:     # less than a few pages of SQLite's
        return '; no space left on the filesystem holding %s' % directory
    for name in (directory, path):
        if os.path.exists(name) and not os.access(name, os.W_OK):
            return '; %s is not writable by this user' % name
    return ''


def create_file(path):
    """Create the database's directory (0700) and an empty file (0600), durably."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    # The new directory entry must survive a power cut too (fsync(2) of the file's directory).
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def configure(conn, journal):
    """Set synchronous=FULL and the journal mode, and read both back: a setting that did not
    take (an old or odd SQLite, a read-only file) must stop us, not be assumed."""
    conn.execute('PRAGMA synchronous = FULL')
    if conn.execute('PRAGMA synchronous').fetchone()[0] != 2:
        raise StorageError('PRAGMA synchronous = FULL did not take')
    if conn.execute('PRAGMA journal_mode').fetchone()[0] != journal:
        # journal is one of JOURNAL_MODES (checked by the caller), so it is safe to format in.
        got = conn.execute('PRAGMA journal_mode = %s' % journal).fetchone()[0]
        if got != journal:
            raise StorageError('PRAGMA journal_mode = %s gave %s' % (journal, got))


def choose_journal(path, mounts='/proc/mounts'):
    """'wal' on a local filesystem, 'delete' (the rollback journal) on a network one."""
    return 'delete' if filesystem_type(path, mounts) in NETWORK_FILESYSTEMS else 'wal'


def filesystem_type(path, mounts='/proc/mounts'):
    """The type of the filesystem holding `path`, from /proc/mounts; None where it is not known."""
    try:
        with open(mounts, encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:  # not Linux: nothing to tell by
        return None
    target = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    best, best_type = '', None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= len(best):  # the last, longest mount point wins
            best, best_type = point, fields[2]
    return best_type


def unescape_mount(field):
    """/proc/mounts writes a space, tab, newline or backslash in a path as an octal escape
    (see proc(5)); the backslash last, so that an escaped backslash is not read again."""
    for escape, char in (('\\040', ' '), ('\\011', '\t'), ('\\012', '\n'), ('\\134', '\\')):
        field = field.replace(escape, char)
    return field


def migrate(conn):
    """Bring the schema to SCHEMA_VERSION, one migration at a time, in one transaction."""
    if conn.execute('PRAGMA user_version').fetchone()[0] == SCHEMA_VERSION:
        return
    with transaction(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        version = conn.execute('PRAGMA user_version').fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError('database schema %d is newer than this code (%d)'
                               % (version, SCHEMA_VERSION))
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute('PRAGMA user_version = %d' % SCHEMA_VERSION)


class Connections:
    """Hands out connections: a new one per use, or, with ``keep=True`` (a long-running
    server), the calling thread's own, kept open between requests.

    Opening costs more than a push: in WAL mode the last connection to close also checkpoints
    and deletes the -wal file. A kept connection is never seen by another thread
    (threading.local) nor used in a forked child (the process id is part of its key: SQLite
    must not carry a connection across fork(), https://sqlite.org/howtocorrupt.html), and is
    replaced when the file at its path is no longer the one it opened (deleted or moved away)
    or after an error. The threads of one process also take turns on a lock (see _Use).
    """

    def __init__(self):
        self.local = None  # made on first keep=True use
        self.lock = self.lock_pid = None

    def use(self, path, journal=None, keep=False):
        """``with connections.use(path, journal, keep) as conn:``"""
        if not keep:
            return _Use(None, None, path, journal)
        import threading  # only here: CGI never pays for it
        if self.local is None:
            self.local = threading.local()
        if self.lock_pid != os.getpid():  # a forked child must not inherit a lock held
            self.lock, self.lock_pid = threading.Lock(), os.getpid()
        if not hasattr(self.local, 'open'):
            self.local.open = {}  # (pid, path, journal) -> (connection, file identity)
        return _Use(self.local.open, self.lock, path, journal)


class _Use:
    def __init__(self, kept, lock, path, journal):
        self.kept, self.lock, self.path, self.journal = kept, lock, os.path.abspath(path), journal
        self.key = (os.getpid(), self.path, journal)

    def __enter__(self):
        # The threads of a server take turns here rather than in SQLite's busy handler, which
        # sleeps 1, 2, 5, 10 ... 100 ms between tries however soon the database is free
        # (sqliteDefaultBusyCallback in SQLite's main.c): a p99 of 150 ms at 4 pushes at once.
        if self.lock is not None and not self.lock.acquire(timeout=BUSY_TIMEOUT):
            raise StorageError('another thread kept the database for %g s' % BUSY_TIMEOUT)
        try:
            return self.open()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def open(self):
        """The kept connection if it is still good, else a new one."""
        conn = identity = None
        if self.kept is not None:
            conn, identity = self.kept.pop(self.key, (None, None))
        if conn is not None and identity != file_identity(self.path):
            conn.close()
            conn = None
        if conn is None:
            conn = connect(self.path, self.journal)
            identity = file_identity(self.path)
        self.conn, self.identity = conn, identity
        return conn

    def __exit__(self, kind, value, tb):
        if self.lock is not None:
            self.lock.release()  # the transaction is over, committed or rolled back
        if self.kept is None or kind is not None:
            self.conn.close()  # after an error, the next use opens afresh
        else:
            self.kept[self.key] = (self.conn, self.identity)
        return False


def file_identity(path):
    """(device, inode) of the file at `path`, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class transaction:
    """``with transaction(conn):`` runs the block in BEGIN IMMEDIATE ... COMMIT.

    IMMEDIATE takes the write lock at once, so a read-then-write block cannot be overtaken by
    another writer between the two; waiting for the lock is bounded by the busy timeout.
    """

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute('BEGIN IMMEDIATE')
        return self.conn

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.conn.execute('COMMIT')
        elif self.conn.in_transaction:
            self.conn.execute('ROLLBACK')
        return False


# -- Deliveries and the processing hook -------------------------------------------------------

def utc_iso(t=None):
    """`t` (Unix time, default now) as UTC ISO 8601 with milliseconds: 2026-11-25T08:26:34.120Z"""
    t = time.time() if t is None else t
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)) + '.%03dZ' % (t * 1000 % 1000)


def deliver(conn, push, claim_seconds=None):
    """Record one delivery of `push` (a dict of the columns); return ``(action, first)``.

    `first` is None for a new guid, else the row stored by the first delivery (a dict).
    Without a hook (`claim_seconds` None) the action is always 'done'. With one:
    'run'  -- this caller holds the claim and must now run the hook (see `process`);
    'done' -- the message was processed already;
    'busy' -- another caller's claim is live: the hook is running elsewhere right now.
    """
    now = time.time()
    stamp = utc_iso(now)
    with transaction(conn):
        row = conn.execute(SELECT_MESSAGE, (push['guid'],)).fetchone()
        if row is None:
            hooked = claim_seconds is not None
            conn.execute(INSERT_MESSAGE, (
                push['guid'], push['phone'], push.get('phone_normalised'), push['message'],
                push['charset'], push['raw_query'], push.get('extra', '{}'),
                push.get('remote_addr'), stamp, stamp,
                'processing' if hooked else 'processed',
                now + claim_seconds if hooked else None,
                None if hooked else stamp))
            return ('run' if hooked else 'done'), None
        conn.execute(COUNT_DELIVERY, (stamp, push['guid']))
        if claim_seconds is None or row['state'] == 'processed':
            return 'done', dict(row)
        return ('run' if try_claim(conn, row, now, claim_seconds) else 'busy'), dict(row)


def try_claim(conn, row, now, claim_seconds):
    """Claim `row` for a hook run unless a live claim holds it; call inside a transaction."""
    if row['state'] == 'processing' and (row['claimed_until'] or 0) > now:
        return False
    conn.execute(CLAIM, (now + claim_seconds, row['guid']))
    return True


def process(connect, guid, handler):
    """Run ``handler(message)`` for the claimed `guid` and record the outcome.

    `handler` is a callable or 'module:function'; `message` is the stored row as a dict, its
    ``extra`` parameters as a dict.
    `connect` opens a fresh connection (this may run in a thread of its own). Returns None
    when the hook returned, or a line for the log when it raised: the exception's class name,
    or its `summary` if it has one (forward.py's name the host and status, never the message);
    the traceback goes to the row's ``last_error`` for the operator.
    """
    import json
    conn = connect()
    try:
        message = dict(conn.execute(SELECT_MESSAGE, (guid,)).fetchone())
    finally:
        conn.close()
    message['extra'] = json.loads(message['extra'])
    try:
        if not callable(handler):
            # Loaded here, after the message is stored: a broken setting must not lose it.
            handler = load_handler(handler)
        handler(message)
    except (Exception, SystemExit) as exc:  # sys.exit() in a hook thread would end it unseen
        import traceback
        error, summary = traceback.format_exc(), getattr(exc, 'summary', type(exc).__name__)
    else:
        error = summary = None
    conn = connect()
    try:
        with transaction(conn):
            if error is None:
                conn.execute(MARK_PROCESSED, (utc_iso(), guid))
            else:
                conn.execute(MARK_FAILED, (error, guid))
    finally:
        conn.close()
    return summary


def choose_hook(handler, forward_url=None, forward_secret=None):
    """What processes a stored message: `handler` (a callable or 'module:function'), or with
    `forward_url` set, a POST to the business's application (forward.py, imported only then);
    None when storing is all."""
    if not forward_url:
        return handler
    import forward
    return forward.Forwarder(forward_url, forward_secret, handler)


def load_handler(spec):
    """Import a hook from 'package.module:function'."""
    import importlib
    module_name, sep, name = spec.partition(':')
    if not (module_name and sep and name):
        raise ValueError('%r is not module:function' % spec)
    handler = importlib.import_module(module_name)
    for part in name.split('.'):
        handler = getattr(handler, part)
    if not callable(handler):
        raise ValueError('%s is not callable' % spec)
    return handler


# -- The operator's command line --------------------------------------------------------------

LIST_COLUMNS = ('received_at', 'guid', 'phone', 'state', 'deliveries', 'message')


def cmd_list(conn, args):
    """Print the newest messages, one a line."""
    rows = conn.execute('SELECT * FROM messages ORDER BY id DESC LIMIT ?', (args.limit,))
    print('\t'.join(LIST_COLUMNS))
    for row in rows:
        text = row['message'].replace('\n', ' ').replace('\t', ' ')
        fields = [str(row[c]) for c in LIST_COLUMNS[:-1]]
        print('\t'.join(fields + [text[:60] + ('...' if len(text) > 60 else '')]))
    return 0


def cmd_show(conn, args):
    """Print every column of one message."""
    row = conn.execute(SELECT_MESSAGE, (args.guid,)).fetchone()
    if row is None:
        print('no message with guid %r' % args.guid, file=sys.stderr)
        return 1
    for key in row.keys():
        print('%-17s %s' % (key + ':', row[key]))
    return 0


def cmd_export(conn, args):
    """Write every message as CSV (with a header line) or JSON Lines to standard output."""
    cursor = conn.execute('SELECT * FROM messages ORDER BY id')
    names = [d[0] for d in cursor.description]
    if args.format == 'csv':
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(cursor)
    else:
        import json
        for row in cursor:
            print(json.dumps(dict(zip(names, row)), ensure_ascii=False))
    return 0


def cmd_stats(conn, args):
    """Print counts: messages, deliveries, duplicates, and messages by state."""
    total, deliveries, first, last = conn.execute(
        'SELECT count(*), coalesce(sum(deliveries), 0), min(received_at), max(received_at)'
        ' FROM messages').fetchone()
    print('messages:    %d' % total)
    print('deliveries:  %d' % deliveries)
    print('duplicates:  %d' % (deliveries - total))
    for state, count in conn.execute(
            'SELECT state, count(*) FROM messages GROUP BY state ORDER BY state'):
        print('%-12s %d' % (state + ':', count))
    print('first:       %s' % (first or '-'))
    print('last:        %s' % (last or '-'))
    return 0


def cmd_retry(conn, args):
    """Run the hook again over messages whose hook failed or whose claim expired (for cron)."""
    spec = choose_hook(args.handler or os.environ.get('FIBOSMS_HANDLER'),
                       os.environ.get('FIBOSMS_FORWARD_URL'),
                       os.environ.get('FIBOSMS_FORWARD_SECRET'))
    if not spec:
        print('no hook: give --handler module:function or set FIBOSMS_HANDLER'
              ' or FIBOSMS_FORWARD_URL', file=sys.stderr)
        return 2
    failures = 0
    for (guid,) in conn.execute(SELECT_RETRYABLE, (time.time(),)).fetchall():
        with transaction(conn):
            row = conn.execute(SELECT_MESSAGE, (guid,)).fetchone()
            claimed = row['state'] != 'processed' and try_claim(conn, row, time.time(),
                                                                 CLAIM_SECONDS)
        if not claimed:
            continue
        error = process(lambda: connect(args.db, args.journal), guid, spec)
        failures += error is not None
        print('%s %s' % (guid, 'failed: ' + error if error else 'processed'))
    return 1 if failures else 0


def cmd_check(conn, args):
    """Check integrity, journal mode, synchronous, permissions and SQLite version."""
    problems = []

    def report(name, value, ok):
        print('%-14s %s%s' % (name + ':', value, '' if ok else '   <-- PROBLEM'))
        if not ok:
            problems.append(name)

    integrity = ', '.join(r[0] for r in conn.execute('PRAGMA integrity_check'))
    report('integrity', integrity, integrity == 'ok')
    mode = conn.execute('PRAGMA journal_mode').fetchone()[0]
    report('journal_mode', mode, mode == args.expected_journal)
    sync = conn.execute('PRAGMA synchronous').fetchone()[0]
    report('synchronous', {2: 'full'}.get(sync, sync), sync == 2)
    for name, path in (('file', args.db), ('directory', os.path.dirname(args.db))):
        mode_bits = os.stat(path).st_mode & 0o777
        report(name, '%s %o' % (path, mode_bits), not mode_bits & 0o077)
    version = sqlite3.sqlite_version
    report('sqlite', version, sqlite3.sqlite_version_info >= MIN_SQLITE)
    schema = conn.execute('PRAGMA user_version').fetchone()[0]
    report('schema', schema, schema == SCHEMA_VERSION)
    return 1 if problems else 0


def current_journal(path):
    """The journal mode of the database at `path`, read without changing it."""
    if not os.path.exists(path):
        raise StorageError('no database at %s' % path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        return conn.execute('PRAGMA journal_mode').fetchone()[0]
    finally:
        conn.close()


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog='storage.py', description=__doc__.split('\n')[0])
    parser.add_argument('--db', default=os.environ.get('FIBOSMS_DB') or default_path(),
                        help='database file (default: $FIBOSMS_DB or %(default)s)')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True
    sub = commands.add_parser('list', help=cmd_list.__doc__)
    sub.add_argument('--limit', type=int, default=50)
    sub = commands.add_parser('show', help=cmd_show.__doc__)
    sub.add_argument('guid')
    sub = commands.add_parser('export', help=cmd_export.__doc__)
    sub.add_argument('--format', choices=('csv', 'jsonl'), default='csv')
    commands.add_parser('stats', help=cmd_stats.__doc__)
    sub = commands.add_parser('retry', help=cmd_retry.__doc__)
    sub.add_argument('--handler', help='module:function (default: $FIBOSMS_HANDLER)')
    commands.add_parser('check', help=cmd_check.__doc__)
    args = parser.parse_args(argv)
    args.db = os.path.abspath(args.db)
    args.expected_journal = os.environ.get('FIBOSMS_JOURNAL') or choose_journal(args.db)
    try:
        # Keep the file in the journal mode it is in: the command line inspects, it does not
        # convert (and `check` could otherwise never see a database in the wrong mode).
        args.journal = current_journal(args.db)
        conn = connect(args.db, journal=args.journal, create=False)
    except (StorageError, sqlite3.Error, OSError) as exc:
        print('storage.py: %s: %s' % (args.db, exc), file=sys.stderr)
        return 1
    try:
        return globals()['cmd_' + args.command](conn, args)
    finally:
        conn.close()


if __name__ == '__main__':
    sys.exit(main())

"""Faults: each one answered try again (HTTP 200, <Status>1</Status>) within the busy timeout
plus a margin (a hung hook: within the hook's bound plus the margin), with one log line naming
the cause, nothing half-written, and a normal 2 once the fault clears.

The faults are real: a tmpfs mounted read-only (root ignores file modes, not a read-only
filesystem), a path through a regular file, a lock held by another process, a full tmpfs,
corrupt bytes in the file, and hooks that raise or hang. Mounting needs root, as in CI; a
fault that cannot be set up fails its test.

Most faults are tried both ways the app uses SQLite: a real CGI process per push
(receiver.py, opening the database afresh) and a connection kept open by a server thread
between pushes (the app under WebTest). A kept connection holds its files open, so a
filesystem cannot be remounted read-only under it (the kernel says busy) and keeps writing
through them, as it should; that fault is tried on its next opening instead.
"""
import contextlib
import gc
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import receiver
import storage
from conftest import DONE, RETRY, rows
from support import CODE, ROOT, integrity, run_cgi

MARGIN = 2.0                                    # seconds allowed over a bound
STORAGE_BOUND = storage.BUSY_TIMEOUT + MARGIN
HOOK_BOUND = 1.0                                # receiver.HOOK_WAIT for the app under test
SYSTEM_PYTHON = '/usr/bin/python3'              # what a web server's user may run
LOCK_HOLDER = '''\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('BEGIN IMMEDIATE')
print('locked', flush=True)
sys.stdin.readline()
conn.execute('ROLLBACK')
'''


class CgiClient:
    """A client whose every push is a real CGI process of receiver.py on the database `db`:
    get() answers as WebTest's, with status_int, body and errors (the process's stderr)."""

    def __init__(self, db):
        self.db = db

    def get(self, url, status=200, expect_errors=False):
        code, body, err = run_cgi(self.db, url.partition('?')[2])
        if code is None:
            raise AssertionError('no answer from the CGI process: %s' % err)
        answer = type('Answer', (), {'status_int': code, 'body': body, 'errors': err})
        assert code == status, (code, body, err)
        return answer


@pytest.fixture(params=['a CGI process a push', 'kept open'])
def client_for(request, make_client, db):
    """client_for(**settings): a client whose pushes are CGI processes, each opening the
    database afresh, or the app under WebTest keeping one connection open between pushes (a
    server's thread), as the test is parametrized."""
    def make(**settings):
        if request.param == 'kept open':
            return make_client(**settings)
        return CgiClient(settings.get('db', db))
    return make


def query(guid, message='fault test'):
    return 'message=%s&phone=0912345678&guid=%s' % (message, guid)


def stored(client, guid, figures):
    """Push `guid`; assert it is answered 200 <Status>2</Status>."""
    res = client.get('/?' + query(guid))
    figures['requests'] += 1
    figures['answered_2'] += 1
    assert res.body == DONE
    return res


def refused(client, guid, cause, figures, bound=STORAGE_BOUND, message='fault test'):
    """Push `guid` during a fault: try again (200 <Status>1</Status>) within `bound` seconds
    and one log line matching `cause`. Returns the line."""
    start = time.monotonic()
    res = client.get('/?' + query(guid, message), status=200, expect_errors=True)
    elapsed = time.monotonic() - start
    figures['requests'] += 1
    assert res.body == RETRY
    lines = res.errors.splitlines()
    assert len(lines) == 1, res.errors
    # The cause must be named before the guid note: the guid itself proves nothing.
    assert re.search(cause, lines[0].rpartition(' (guid ')[0], re.IGNORECASE), lines[0]
    assert elapsed < bound, 'answered after %.1f s' % elapsed
    return lines[0]


def file_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


@contextlib.contextmanager
def small_filesystem(path, size='512k'):
    """A tmpfs of `size` mounted at `path` (made), unmounted on the way out."""
    os.makedirs(path)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0700' % size, 'fibosms-test',
                    path], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield path
    finally:
        gc.collect()        # a client let go of closes its kept connection, and its files
        if subprocess.run(['umount', path], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(['umount', '-l', path], check=True)


def remount(path, mode):
    subprocess.run(['mount', '-o', 'remount,' + mode, path], check=True)


def fill(path):
    """Write zeros to a new file under `path` until the filesystem says it is full."""
    filler = os.path.join(path, 'filler')
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(1 << 20):      # bounded: 4 GiB at most
            os.write(fd, b'\0' * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc   # ENOSPC
    else:
        raise AssertionError('%s never filled up' % path)
    finally:
        os.close(fd)
    return filler


# -- The filesystem ----------------------------------------------------------------------------

def test_read_only_directory_is_try_again_naming_it_then_2_when_writable(tmp_path, make_client,
                                                                   client_for, figures):
    """A database on a filesystem gone read-only: try again naming it, file untouched, then 2."""
    with small_filesystem(str(tmp_path / 'mnt')) as mnt:
        db = os.path.join(mnt, 'data', 'messages.sqlite3')
        stored(CgiClient(db), 'ro-1', figures)
        before = file_bytes(db)
        remount(mnt, 'ro')
        figures['faults'] += 1
        with pytest.raises(OSError):     # the fault is real, for root too
            open(os.path.join(mnt, 'data', 'probe'), 'w').close()
        client = client_for(db=db)       # its first opening meets the fault
        refused(client, 'ro-2', r'read-only|not writable', figures)
        assert file_bytes(db) == before
        remount(mnt, 'rw')
        stored(client, 'ro-2', figures)
        assert [r['guid'] for r in rows(db)] == ['ro-1', 'ro-2']
        assert integrity(db) == 'ok'
        del client


@pytest.mark.parametrize('blocker', ['a regular file', 'a read-only filesystem'])
def test_directory_that_cannot_be_created_is_try_again_then_2(tmp_path, client_for, figures,
                                                        blocker):
    """The database's folder cannot be made: try again naming why, no file, then 2 once it can."""
    with small_filesystem(str(tmp_path / 'mnt')) as mnt:
        parent = os.path.join(mnt, 'parent')
        if blocker == 'a regular file':
            open(parent, 'w').close()
            cause = 'Not a directory'
        else:
            remount(mnt, 'ro')
            cause = 'Read-only file system'
        figures['faults'] += 1
        db = os.path.join(parent, 'data', 'messages.sqlite3')
        client = client_for(db=db)
        refused(client, 'mkdir-1', cause, figures)
        assert not os.path.exists(db)
        if blocker == 'a regular file':
            os.remove(parent)
        else:
            remount(mnt, 'rw')
        stored(client, 'mkdir-1', figures)
        assert [r['guid'] for r in rows(db)] == ['mkdir-1']
        assert os.stat(os.path.dirname(db)).st_mode & 0o777 == 0o700
        del client


def test_full_disk_is_try_again_naming_it_then_2_when_space_is_freed(tmp_path, client_for,
                                                               figures):
    """A full filesystem: try again naming it, nothing half-written, then 2 once space is freed."""
    with small_filesystem(str(tmp_path / 'mnt'), '512k') as mnt:
        db = os.path.join(mnt, 'data', 'messages.sqlite3')
        client = client_for(db=db)
        stored(client, 'disk-1', figures)
        filler = fill(mnt)
        figures['faults'] += 1
        refused(client, 'disk-2', r'full|no space', figures, message='x' * 8000)
        os.remove(filler)      # a reader needs room too (the -shm file), so look after this
        assert [r['guid'] for r in rows(db)] == ['disk-1']
        assert integrity(db) == 'ok'
        stored(client, 'disk-2', figures)
        assert [r['guid'] for r in rows(db)] == ['disk-1', 'disk-2']
        assert integrity(db) == 'ok'
        del client


def as_nobody():
    """In the child: become `nobody`, as a web server's user that does not own the data."""
    user = pwd.getpwnam('nobody')
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def test_folder_of_another_user_is_try_again_naming_it_then_2(figures):
    """Run as a user who does not own the folder: try again naming its owner; then 2."""
    base = tempfile.mkdtemp(prefix='fibosms-nobody-')  # not tmp_path: nobody cannot enter it
    try:
        os.chmod(base, 0o755)
        for name in CODE:   # a copy nobody can read
            shutil.copy(os.path.join(ROOT, name), base)
        db = os.path.join(base, 'data', 'messages.sqlite3')
        code, _, err = run_cgi(db, query('own-1'))   # made by root: 0600 in a 0700 folder
        assert code == 200, err
        argv = [SYSTEM_PYTHON, os.path.join(base, 'receiver.py')]  # nobody may not run pyenv's
        figures['faults'] += 1
        start = time.monotonic()
        code, body, err = run_cgi(db, query('own-2'), argv=argv, preexec_fn=as_nobody)
        figures['requests'] += 1
        assert (code, body) == (200, RETRY) and time.monotonic() - start < STORAGE_BOUND
        [line] = err.splitlines()
        assert re.search(r'folder .* belongs to uid 0, not to this user',
                         line.rpartition(' (guid ')[0]), line
        nobody = pwd.getpwnam('nobody')
        for name in [''] + os.listdir(os.path.dirname(db)):    # chown -R, with -wal and -shm
            os.chown(os.path.join(os.path.dirname(db), name), nobody.pw_uid, nobody.pw_gid)
        code, body, err = run_cgi(db, query('own-2'), argv=argv, preexec_fn=as_nobody)
        figures['requests'] += 1
        figures['answered_2'] += 1
        assert (code, body) == (200, DONE), err
        assert [r['guid'] for r in rows(db)] == ['own-1', 'own-2']
    finally:
        shutil.rmtree(base)


# -- The database file -------------------------------------------------------------------------

def test_database_locked_past_the_busy_timeout_is_try_again_then_2(db, make_client, figures):
    """Another process holds the write lock past 5 s: try again, 'locked', in time, then 2."""
    client = make_client()      # a kept connection: the server's way (5 s: tried once)
    stored(client, 'lock-1', figures)
    holder = subprocess.Popen([sys.executable, '-c', LOCK_HOLDER, db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b'locked\n'
        figures['faults'] += 1
        start = time.monotonic()
        refused(client, 'lock-2', r'database is locked', figures)
        assert time.monotonic() - start >= storage.BUSY_TIMEOUT - 0.5, 'gave up too early'
        holder.stdin.close()
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    stored(client, 'lock-2', figures)
    assert [r['guid'] for r in rows(db)] == ['lock-1', 'lock-2']


def corrupt_header(db):
    with open(db, 'r+b') as f:
        f.write(b'this is not SQLite at all ' * 4)
    return r'file is (encrypted or is )?not a database'  # SQLite 3.7.17 says 'encrypted or'


def corrupt_table_page(db):
    conn = sqlite3.connect(db)
    page_size = conn.execute('PRAGMA page_size').fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()
    conn.close()
    with open(db, 'r+b') as f:
        f.seek((root[0] - 1) * page_size)
        f.write(b'\xa5' * page_size)
    return r'malformed'


def checkpoint(db):
    """Move every page from the -wal file into the database file, as SQLite does in time."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize('corrupt', [corrupt_header, corrupt_table_page])
def test_corrupt_database_is_try_again_and_left_untouched_then_2_on_a_new_file(
        db, client_for, figures, corrupt):
    """A corrupt file: try again naming it, its bytes untouched; moved aside, the next push is 2."""
    client = client_for()
    stored(client, 'corrupt-1', figures)
    checkpoint(db)                             # the file holds everything: corrupt it
    cause = corrupt(db)
    figures['faults'] += 1
    before = file_bytes(db)
    refused(client, 'corrupt-2', cause, figures)
    assert file_bytes(db) == before
    for suffix in ('', '-wal', '-shm'):        # what the operator does: README, "corrupt"
        if os.path.exists(db + suffix):
            os.rename(db + suffix, db + '.corrupt' + suffix)
    stored(client, 'corrupt-2', figures)
    assert [r['guid'] for r in rows(db)] == ['corrupt-2']


# -- The hook ----------------------------------------------------------------------------------

class FailingHook(object):
    """Raises until `fixed` is set; counts its runs."""

    def __init__(self):
        self.fixed = False
        self.runs = 0

    def __call__(self, message):
        self.runs += 1
        if not self.fixed:
            raise ValueError('the CRM is down')


class HangingHook(object):
    """Hangs until `release` is set (30 s at most); counts its runs."""

    def __init__(self):
        self.release = threading.Event()
        self.finished = threading.Event()
        self.runs = 0

    def __call__(self, message):
        self.runs += 1
        self.release.wait(30)
        self.finished.set()


def test_hook_that_raises_is_try_again_then_2_once_it_works(db, make_client, figures):
    """A hook that raises: try again naming its exception, the row kept as failed, then 2."""
    hook = FailingHook()
    client = make_client(handler=hook)
    figures['faults'] += 1
    refused(client, 'hook-1', r'hook failed: ValueError', figures)
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['deliveries']) == ('failed', 1, 1)
    assert 'the CRM is down' in row['last_error']
    hook.fixed = True
    stored(client, 'hook-1', figures)
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['deliveries']) == ('processed', 2, 2)
    assert row['last_error'] is None and hook.runs == 2


def test_hook_that_hangs_is_try_again_after_its_bound_and_never_runs_twice(
        db, make_client, figures, monkeypatch):
    """A hung hook: try again after HOOK_WAIT; so are retries, with no second run; then 2."""
    monkeypatch.setattr(receiver, 'HOOK_WAIT', HOOK_BOUND)
    hook = HangingHook()
    client = make_client(handler=hook)
    figures['faults'] += 1
    try:
        start = time.monotonic()
        refused(client, 'hang-1', r'hook still running after 1 s', figures,
                bound=HOOK_BOUND + MARGIN)
        assert time.monotonic() - start >= HOOK_BOUND - 0.1
        refused(client, 'hang-1', r'hook already running', figures, bound=MARGIN)
        assert hook.runs == 1
        [row] = rows(db)
        assert (row['state'], row['deliveries']) == ('processing', 2)
    finally:
        hook.release.set()
    assert hook.finished.wait(10)
    deadline = time.monotonic() + 10
    while rows(db)[0]['state'] != 'processed' and time.monotonic() < deadline:
        time.sleep(0.02)       # the hook's thread records its outcome after it returns
    stored(client, 'hang-1', figures)
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['deliveries']) == ('processed', 1, 3)
    assert hook.runs == 1

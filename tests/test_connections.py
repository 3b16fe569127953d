"""The connection policy (connections.py, storage.Once): a long-running server's kept
connection is reused only where that is safe, and no push answered 2 is lost when the
database or its -wal and -shm files are moved, deleted or replaced under it."""
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import connections
import storage
from conftest import DONE, rows

PUSH = {'phone': '1', 'message': 'hi', 'charset': 'utf-8', 'raw_query': ''}


def push(conn, guid):
    return storage.deliver(conn, dict(PUSH, guid=guid))


def test_kept_connection_is_reused_by_the_same_thread(db):
    """A server's thread gets its own connection back on its next use."""
    kept = connections.Kept()
    with kept.use(db) as first:
        push(first, 'a')
    with kept.use(db) as second:
        push(second, 'b')
    assert second is first
    assert [r['guid'] for r in rows(db)] == ['a', 'b']


def test_a_cgi_push_opens_one_connection_and_never_closes_it(db, tmp_path):
    """A CGI process's connection (storage.Once) is left open for os._exit: its -wal and -shm
    files stay, so the next process finds them and its commit is one fsync; and the process
    needs no thread."""
    code = '''import sys, os
sys.path.insert(0, %r)
import storage
with storage.Once(%r) as conn:
    storage.deliver(conn, {'guid': sys.argv[1], 'phone': '1', 'message': 'm',
                           'charset': 'utf-8', 'raw_query': ''})
print('threading' in sys.modules, flush=True)
os._exit(0)
''' % (os.path.dirname(storage.__file__), db)
    for guid in ('a', 'b'):
        out = subprocess.check_output([sys.executable, '-S', '-c', code, guid])
        assert out == b'False\n'
        assert os.path.exists(db + '-wal') and os.path.exists(db + '-shm')
    assert [r['guid'] for r in rows(db)] == ['a', 'b']


def test_a_cgi_push_whose_files_are_replaced_during_it_fails(db):
    """The database replaced while a CGI push commits: an error (answered 1, sent again)."""
    with pytest.raises(storage.StorageError, match='moved, deleted or replaced'):
        with storage.Once(db) as conn:
            push(conn, 'a')
            os.rename(db, db + '.moved')
            shutil.copy(db + '.moved', db)


def remove_database(db):
    """What an operator does to start afresh: the file and its companions, together."""
    for suffix in ('', '-wal', '-shm'):
        os.remove(db + suffix)


def test_kept_connection_is_replaced_when_the_file_is_deleted(db):
    """A database deleted under a running server is recreated, not written into the void."""
    kept = connections.Kept()
    with kept.use(db) as first:
        push(first, 'a')
    remove_database(db)
    with kept.use(db) as second:
        push(second, 'b')
    assert second is not first
    assert [r['guid'] for r in rows(db)] == ['b']


def test_kept_connection_is_dropped_after_an_error(db):
    """A use that raised closes its connection; the next use opens a new one."""
    kept = connections.Kept()
    try:
        with kept.use(db) as first:
            raise RuntimeError('anything')
    except RuntimeError:
        pass
    with kept.use(db) as second:
        assert second is not first
        push(second, 'a')


def test_forked_child_opens_its_own_connection(db):
    """A child forked after a push never uses its parent's connection (howtocorrupt 2.6)."""
    kept = connections.Kept()
    with kept.use(db) as parents:
        push(parents, 'a')
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got the parent's object, then leave at once
        try:
            with kept.use(db) as childs:
                push(childs, 'b')
                os.write(write, b'same' if childs is parents else b'own')
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 10)
    os.waitpid(pid, 0)
    assert answer == b'own'
    assert [r['guid'] for r in rows(db)] == ['a', 'b']


def test_app_keeps_a_connection_only_outside_cgi(make_client, db):
    """Under a long-running server the app keeps its thread's connection; a push still
    lands in the file at the configured path when that file was deleted meanwhile."""
    client = make_client()
    assert client.get('/?guid=a&phone=1').body == DONE
    remove_database(db)
    assert client.get('/?guid=b&phone=1').body == DONE
    assert [r['guid'] for r in rows(db)] == ['b']


def test_threads_of_one_process_take_turns(db):
    """A second thread's use waits while a first thread's use is under way."""
    kept = connections.Kept()
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with kept.use(db) as conn:
            inside.set()
            release.wait(5)
            push(conn, 'a')
            order.append('first done')

    def second():
        inside.wait(5)
        with kept.use(db) as conn:
            order.append('second in')
            push(conn, 'b')

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    inside.wait(5)
    threading.Event().wait(0.2)  # give the second thread time to be stopped at the lock
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ['first done', 'second in']


def test_forked_child_is_not_stopped_by_a_lock_its_parent_held(db):
    """A child forked while another thread of its parent holds the lock still gets its turn."""
    kept = connections.Kept()
    inside, release = threading.Event(), threading.Event()

    def holder():
        with kept.use(db) as conn:
            inside.set()
            release.wait(10)
            push(conn, 'parent')

    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with kept.use(db) as conn:
                push(conn, 'child')
                os.write(write, b'stored')
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 10)  # before the parent's holder lets go
    os.waitpid(pid, 0)
    release.set()
    thread.join(10)
    assert answer == b'stored'
    assert sorted(r['guid'] for r in rows(db)) == ['child', 'parent']


def test_kept_connection_is_replaced_when_another_connection_wrote_the_file(db):
    """A checkpoint by another connection changes the file: the next use opens afresh."""
    kept = connections.Kept()
    with kept.use(db) as first:
        push(first, 'a')
    other = storage.connect(db)
    push(other, 'b')
    other.execute('PRAGMA wal_checkpoint')
    other.close()
    with kept.use(db) as second:
        push(second, 'c')
    assert second is not first
    assert [r['guid'] for r in rows(db)] == ['a', 'b', 'c']


def test_kept_connection_is_kept_while_the_files_are_as_it_left_them(db):
    """Its own writes, checkpoints included, do not make the next use open afresh."""
    kept = connections.Kept()
    with kept.use(db) as first:
        push(first, 'a')
        first.execute('PRAGMA wal_checkpoint')
    with kept.use(db) as second:
        push(second, 'b')
    assert second is first


def test_wal_file_without_its_database_is_refused(db):
    """A -wal file left where the database was would be played into a new one: refused."""
    conn = storage.connect(db)
    push(conn, 'a')
    with open(db + '-wal', 'rb') as f:
        leftover = f.read()
    conn.close()
    for name in os.listdir(os.path.dirname(db)):
        os.remove(os.path.join(os.path.dirname(db), name))
    with open(db + '-wal', 'wb') as f:
        f.write(leftover)
    for use in (connections.Kept().use, storage.Once):
        with pytest.raises(storage.StorageError, match='-wal is there without its database'):
            with use(db):
                pass
    assert not os.path.exists(db)


def test_a_database_made_meanwhile_with_its_journal_is_not_a_lone_journal(db, monkeypatch):
    """Two first requests at once: between this one's look for the database and its look for
    a -wal, the other made both (real files). It is the database, not a lone -wal."""
    other = storage.connect(db + '.other')
    push(other, 'a')
    looked = []

    def lexists(path, real=os.path.lexists):
        if path.endswith('-wal') and not looked:     # the other process, just then
            looked.append(path)
            os.rename(db + '.other', db)
            os.rename(db + '.other-wal', db + '-wal')
            os.rename(db + '.other-shm', db + '-shm')
        return real(path)
    monkeypatch.setattr(storage.os.path, 'lexists', lexists)
    with storage.Once(db) as conn:
        assert [tuple(r) for r in conn.execute('SELECT guid FROM messages')] == [('a',)]
    other.close()
    assert looked == [db + '-wal']


def test_wal_file_deleted_under_a_kept_connection_loses_nothing(db):
    """-wal and -shm deleted under a running server: the next push reopens and is stored,
    and what the old connection had committed is checkpointed back (no restart needed)."""
    kept = connections.Kept()
    with kept.use(db) as first:
        push(first, 'a')
    os.remove(db + '-wal')
    os.remove(db + '-shm')
    with kept.use(db) as second:
        push(second, 'b')
    assert second is not first
    assert [r['guid'] for r in rows(db)] == ['a', 'b']


def test_wal_file_replaced_during_a_use_fails_it(db):
    """A -wal file deleted while a push is committing: not known to be stored, so an error
    (answered 1, sent again), and the next use is stored."""
    kept = connections.Kept()
    with pytest.raises(storage.StorageError, match='-wal or -shm file was moved, deleted or replaced'):
        with kept.use(db) as conn:
            push(conn, 'a')
            os.remove(db + '-wal')
    with kept.use(db) as conn:
        push(conn, 'b')
    assert 'b' in [r['guid'] for r in rows(db)]


def test_wal_file_replaced_and_the_folder_time_put_back_is_seen(db):
    """A restore by `rsync -a` over the running server's folder: the database file unchanged
    (skipped), the -wal file replaced by a rename, the folder's modification time put back.
    The folder's change time cannot be put back: the replacement is seen and refused."""
    kept = connections.Kept()
    with kept.use(db) as conn:
        push(conn, 'a')
    folder = os.stat(os.path.dirname(db))
    shutil.copy(db + '-wal', db + '-wal.new')
    os.rename(db + '-wal.new', db + '-wal')
    os.utime(os.path.dirname(db), ns=(folder.st_atime_ns, folder.st_mtime_ns))
    with pytest.raises(storage.StorageError, match='made a new -wal file for .* restart this one'):
        with kept.use(db) as conn:
            push(conn, 'b')


def test_database_written_over_in_place_with_its_time_put_back_is_seen(db):
    """A backup copied over the database in place, its modification time put back (as
    `cp -p` does): the same file, of the same size, but its change time moved, so the kept
    connection, whose cache holds what was overwritten, is not used again."""
    kept = connections.Kept()
    with kept.use(db, 'delete') as first:
        push(first, 'a')
    shutil.copyfile(db, db + '.backup')
    with kept.use(db, 'delete') as conn:
        push(conn, 'b')
    st = os.stat(db)
    with open(db + '.backup', 'rb') as backup, open(db, 'r+b') as f:
        f.write(backup.read())
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(db).st_size == st.st_size
    with kept.use(db, 'delete') as second:
        push(second, 'c')
    assert second is not first
    assert [r['guid'] for r in rows(db)] == ['a', 'c']


def test_app_recovers_from_deleted_wal_and_shm_files_without_a_restart(make_client, db):
    """-wal and -shm deleted under the running app: every later push is stored and read back."""
    client = make_client()
    assert client.get('/?guid=a&phone=1').body == DONE
    os.remove(db + '-wal')
    os.remove(db + '-shm')
    for guid in ('b', 'c'):
        assert client.get('/?guid=%s&phone=1' % guid).body == DONE
    assert [r['guid'] for r in rows(db)] == ['a', 'b', 'c']


def test_database_moved_aside_under_a_kept_connection_leaves_the_new_one_whole(db):
    """The operator moves the database and its -wal and -shm aside while two servers run;
    one makes a new database: the other's old connection must not delete its -wal file
    (closing it would, on SQLite 3.7.17, which deletes them by name: 'disk I/O error')."""
    old_server, new_server = connections.Kept(), connections.Kept()
    with old_server.use(db) as conn:
        push(conn, 'a')
    aside = os.path.join(os.path.dirname(db), 'aside')
    os.mkdir(aside, 0o700)
    for suffix in ('', '-wal', '-shm'):
        os.rename(db + suffix, os.path.join(aside, 'messages.sqlite3' + suffix))
    with new_server.use(db) as conn:   # keeps the new -wal and -shm open
        push(conn, 'b')
    with old_server.use(db) as conn:
        push(conn, 'c')
    assert [r['guid'] for r in rows(db)] == ['b', 'c']
    assert [r['guid'] for r in rows(os.path.join(aside, 'messages.sqlite3'))] == ['a']


SERVER = r'''
import sys
sys.path.insert(0, sys.argv[1])
import connections
import storage
kept = connections.Kept()
for line in sys.stdin:
    command, _, guid = line.split()[0], None, line.split()[-1]
    if command == 'exit':
        break
    try:
        with kept.use(sys.argv[2]) as conn:
            storage.deliver(conn, dict(guid=guid, phone='1', message='m', charset='utf-8',
                                       raw_query=''))
        print('stored', flush=True)
    except storage.StorageError as exc:
        print('refused %s' % exc, flush=True)
'''


class Server(object):
    """A process that keeps its connection between pushes, as a server's does."""

    def __init__(self, db):
        self.proc = subprocess.Popen(
            [sys.executable, '-c', SERVER, os.path.dirname(storage.__file__), db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)

    def push(self, guid):
        self.proc.stdin.write('push %s\n' % guid)
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def exit(self):
        self.proc.stdin.write('exit x\n')
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0
        self.proc.stdout.close()


def guids_seen_by_a_new_process(db):
    code = ('import sqlite3, sys; print(" ".join(r[0] for r in sqlite3.connect(sys.argv[1])'
            '.execute("SELECT guid FROM messages ORDER BY id")))')
    return subprocess.check_output([sys.executable, '-c', code, db],
                                   universal_newlines=True).split()


def test_moved_database_stays_whole_when_the_old_server_exits(db):
    """A server whose database was moved aside goes on with the new one, and its exit does
    not delete the new database's -wal file (SQLite 3.7.17 closing would, by name)."""
    old, new = Server(db), Server(db)
    try:
        assert old.push('a') == 'stored'
        os.mkdir(os.path.join(os.path.dirname(db), 'aside'), 0o700)
        for suffix in ('', '-wal', '-shm'):
            os.rename(db + suffix, os.path.join(os.path.dirname(db), 'aside',
                                                'messages.sqlite3' + suffix))
        assert new.push('b') == 'stored'
        assert old.push('c') == 'stored'
        old.exit()
        assert new.push('d') == 'stored'
    finally:
        new.exit()
    assert guids_seen_by_a_new_process(db) == ['b', 'c', 'd']


def test_new_wal_file_made_by_another_process_is_never_deleted(db):
    """-wal and -shm deleted; another process then commits into a new -wal file: the server
    must not close its old connection (that would delete the new file by name and lose the
    push), so it refuses until restarted, and nothing answered 2 afterwards is lost."""
    server = Server(db)
    try:
        assert server.push('a') == 'stored'
        os.remove(db + '-wal')
        os.remove(db + '-shm')
        other = Server(db)
        assert other.push('c') == 'stored'
        assert server.push('d').startswith('refused another process made a new -wal file for %s' % db)
        assert other.push('e') == 'stored'
        other.exit()
    finally:
        server.exit()
    restarted = Server(db)
    try:
        assert restarted.push('f') == 'stored'
    finally:
        restarted.exit()
    assert guids_seen_by_a_new_process(db)[-3:] == ['c', 'e', 'f']


def test_database_replaced_during_a_use_fails_it(db):
    """The file replaced (cp and mv) while a push commits in it: an error, never a 2 (SQLite
    3.40 says 'readonly database' itself; 3.7.17 commits into the old file unaware)."""
    kept = connections.Kept()
    with kept.use(db, 'delete') as conn:
        push(conn, 'a')
    with pytest.raises((storage.StorageError, sqlite3.OperationalError),
                       match='moved, deleted or replaced|readonly database'):
        with kept.use(db, 'delete') as conn:
            shutil.copy(db, db + '.tmp')
            os.rename(db + '.tmp', db)
            push(conn, 'b')
    with kept.use(db, 'delete') as conn:
        push(conn, 'c')
    assert [r['guid'] for r in rows(db)] == ['a', 'c']

"""Storage: schema and migrations, the duplicate rule, durability settings, journal choice,
file permissions, the default path, the busy timeout and what happens at import time."""
import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

import receiver
import storage
from conftest import DONE, RETRY, ROOT, rows

COLUMNS = [
    'id', 'guid', 'phone', 'phone_normalised', 'message', 'charset', 'raw_query', 'extra',
    'remote_addr', 'received_at', 'deliveries', 'last_delivery_at', 'state', 'claimed_until',
    'hook_runs', 'last_error', 'processed_at',
]
VIETNAMESE = 'Xin chào, tôi muốn đặt 2 bánh mì'


def push(guid='g-1', phone='0912345678', message='hello'):
    """The push as receiver.read_push would hand it to storage."""
    return {'guid': guid, 'phone': phone, 'phone_normalised': receiver.normalise_phone(phone),
            'message': message, 'charset': 'utf-8', 'extra': '{}', 'remote_addr': '127.0.0.1',
            'raw_query': 'guid=%s&phone=%s' % (guid, phone)}


def clean_env(**extra):
    """The environment of a subprocess: ours without any FIBOSMS_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
    env.update(extra)
    return env


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def conn(db):
    """A connection from storage.connect to a new database."""
    connection = storage.connect(db)
    yield connection
    connection.close()


# -- Schema and migrations --------------------------------------------------------------------

def test_schema_has_the_documented_columns(conn):
    """The messages table has exactly the columns the module docstring lists."""
    names = [r['name'] for r in conn.execute('PRAGMA table_info(messages)')]
    assert names == COLUMNS


def test_guid_is_not_null(conn):
    """guid is declared NOT NULL."""
    info = {r['name']: r for r in conn.execute('PRAGMA table_info(messages)')}
    assert info['guid']['notnull'] == 1


def test_guid_is_unique(conn):
    """A unique index covers guid alone."""
    unique = []
    for index in conn.execute('PRAGMA index_list(messages)'):
        if index['unique']:
            unique.append([c['name'] for c in
                           conn.execute('PRAGMA index_info(%s)' % index['name'])])
    assert ['guid'] in unique


def test_user_version_is_schema_version(conn):
    """A new database records SCHEMA_VERSION in PRAGMA user_version."""
    assert conn.execute('PRAGMA user_version').fetchone()[0] == storage.SCHEMA_VERSION


def test_empty_version_0_database_is_migrated(db):
    """An existing empty database at user_version 0 is brought up to SCHEMA_VERSION."""
    os.makedirs(os.path.dirname(db), mode=0o700)
    sqlite3.connect(db).close()
    os.chmod(db, 0o600)
    conn = storage.connect(db)
    try:
        assert conn.execute('PRAGMA user_version').fetchone()[0] == storage.SCHEMA_VERSION
        names = [r['name'] for r in conn.execute('PRAGMA table_info(messages)')]
    finally:
        conn.close()
    assert names == COLUMNS


def test_newer_schema_is_refused(db):
    """A database whose user_version is newer than the code raises StorageError."""
    storage.connect(db).close()
    plain = sqlite3.connect(db)
    plain.execute('PRAGMA user_version = %d' % (storage.SCHEMA_VERSION + 1))
    plain.close()
    with pytest.raises(storage.StorageError, match='newer'):
        storage.connect(db)


def test_newer_schema_answers_try_again(client, db):
    """A push into a database of a newer schema answers "try again": 200 <Status>1</Status>."""
    storage.connect(db).close()
    plain = sqlite3.connect(db)
    plain.execute('PRAGMA user_version = %d' % (storage.SCHEMA_VERSION + 1))
    plain.close()
    res = client.get('/?guid=g-1&phone=0912345678&message=hi', status=200, expect_errors=True)
    assert res.body == RETRY
    assert 'newer' in res.errors


# -- The duplicate rule -----------------------------------------------------------------------

def test_first_delivery_inserts_one_row(client, db):
    """The first delivery of a guid stores one row with the push's values."""
    res = client.get('/', {'guid': 'g-1', 'phone': '0912345678', 'message': VIETNAMESE})
    assert res.body == DONE
    [row] = rows(db)
    assert (row['guid'], row['phone'], row['message']) == ('g-1', '0912345678', VIETNAMESE)
    assert (row['deliveries'], row['state']) == (1, 'processed')
    assert row['received_at'] == row['last_delivery_at']


def test_later_deliveries_are_counted(client, db):
    """Each later delivery of a guid adds to deliveries and stores no second row."""
    for _ in range(3):
        assert client.get('/?guid=g-1&phone=0912345678&message=hi').body == DONE
    [row] = rows(db)
    assert row['deliveries'] == 3
    assert row['last_delivery_at'] >= row['received_at']


@pytest.mark.parametrize('changed', [
    {'phone': '0987654321'},
    {'message': 'a different text'},
    {'phone': '0987654321', 'message': 'a different text'},
])
def test_redelivery_never_overwrites(client, db, changed):
    """A redelivery with another phone or message keeps the first one and answers 2."""
    first = {'guid': 'g-1', 'phone': '0912345678', 'message': VIETNAMESE}
    client.get('/', first)
    res = client.get('/', dict(first, **changed), expect_errors=True)
    assert res.status_int == 200
    assert res.body == DONE
    [row] = rows(db)
    assert (row['phone'], row['message'], row['deliveries']) == (
        first['phone'], first['message'], 2)


def test_redelivery_with_other_values_logs_a_warning(client):
    """A redelivery with another message logs one warning naming the guid, not the text."""
    client.get('/?guid=g-1&phone=0912345678&message=alpha')
    res = client.get('/?guid=g-1&phone=0912345678&message=omega', expect_errors=True)
    lines = res.errors.splitlines()
    assert len(lines) == 1
    assert 'warning' in lines[0] and "'g-1'" in lines[0]
    assert 'alpha' not in lines[0] and 'omega' not in lines[0]


@pytest.mark.parametrize('column, value', [
    ('message', None),
    ('phone', None),
    ('charset', None),
    ('raw_query', None),
    ('phone', ''),
    ('guid', ''),
])
def test_constraint_failure_raises(conn, db, column, value):
    """A NOT NULL or CHECK failure raises IntegrityError (a plain INSERT, not OR IGNORE)."""
    bad = dict(push(), **{column: value})
    with pytest.raises(sqlite3.IntegrityError):
        storage.deliver(conn, bad)
    assert not conn.in_transaction
    assert rows(db) == []


# -- Durability and the journal ---------------------------------------------------------------

@pytest.mark.parametrize('journal', ['wal', 'delete'])
def test_synchronous_is_full_on_every_connection(db, journal):
    """Every connection storage.connect opens, new file or not, reads synchronous back as 2."""
    connections = [storage.connect(db, journal) for _ in range(3)]
    try:
        assert [c.execute('PRAGMA synchronous').fetchone()[0] for c in connections] == [2] * 3
    finally:
        for c in connections:
            c.close()


def test_wal_on_a_local_filesystem(client, db):
    """On the local disk of tmp_path the database is left in WAL mode."""
    assert storage.choose_journal(db) == 'wal'
    client.get('/?guid=g-1&phone=0912345678')
    plain = sqlite3.connect(db)
    try:
        assert plain.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    finally:
        plain.close()


def write_mounts(tmp_path, *entries):
    """A mounts-format file (as /proc/mounts) with one line per (mount point, type)."""
    lines = ['/dev/sda1 / ext4 rw,relatime 0 0']
    for point, kind in entries:
        lines.append('server:/export %s %s rw,relatime 0 0' % (point.replace(' ', '\\040'), kind))
    path = tmp_path / 'mounts'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return str(path)


@pytest.mark.parametrize('kind, journal', [
    ('nfs', 'delete'),
    ('nfs4', 'delete'),
    ('cifs', 'delete'),
    ('ext4', 'wal'),
    ('xfs', 'wal'),
])
def test_choose_journal_by_filesystem_type(tmp_path, kind, journal):
    """A database under a network mount gets the rollback journal, a local one WAL."""
    point = os.path.join(os.path.realpath(str(tmp_path)), 'mnt')
    mounts = write_mounts(tmp_path, (point, kind))
    db = os.path.join(point, 'fibosms', 'messages.sqlite3')
    assert storage.filesystem_type(db, mounts) == kind
    assert storage.choose_journal(db, mounts) == journal


def test_mount_point_with_escaped_space(tmp_path):
    """A mount point written with \\040 for a space is matched against the real path."""
    point = os.path.join(os.path.realpath(str(tmp_path)), 'my share')
    mounts = write_mounts(tmp_path, (point, 'cifs'))
    assert '\\040' in open(mounts).read()
    db = os.path.join(point, 'messages.sqlite3')
    assert storage.filesystem_type(db, mounts) == 'cifs'
    assert storage.choose_journal(db, mounts) == 'delete'


def test_longest_mount_point_wins(tmp_path):
    """A local mount inside a network mount decides for the paths under it."""
    outer = os.path.join(os.path.realpath(str(tmp_path)), 'net')
    inner = os.path.join(outer, 'local')
    mounts = write_mounts(tmp_path, (outer, 'nfs'), (inner, 'ext4'))
    assert storage.choose_journal(os.path.join(inner, 'm.sqlite3'), mounts) == 'wal'
    assert storage.choose_journal(os.path.join(outer, 'm.sqlite3'), mounts) == 'delete'


def test_unreadable_mounts_file_means_wal(tmp_path):
    """Without a mounts file (not Linux) the type is unknown and the journal is WAL."""
    missing = str(tmp_path / 'no-such-mounts')
    assert storage.filesystem_type(str(tmp_path / 'm.sqlite3'), missing) is None
    assert storage.choose_journal(str(tmp_path / 'm.sqlite3'), missing) == 'wal'


def journal_mode(db):
    plain = sqlite3.connect(db)
    try:
        return plain.execute('PRAGMA journal_mode').fetchone()[0]
    finally:
        plain.close()


def test_journal_delete_from_make_app(make_client, db):
    """make_app(journal='delete') keeps the database out of WAL mode."""
    client = make_client(journal='delete')
    assert client.get('/?guid=g-1&phone=0912345678').body == DONE
    assert journal_mode(db) == 'delete'
    assert not os.path.exists(db + '-wal')


@pytest.mark.parametrize('where', ['wsgi environ', 'os.environ'])
def test_journal_delete_from_environ(make_client, db, monkeypatch, where):
    """FIBOSMS_JOURNAL=delete, in the WSGI environ or the process's, keeps WAL off."""
    if where == 'wsgi environ':
        client = make_client(extra_environ={'FIBOSMS_JOURNAL': 'delete'})
    else:
        monkeypatch.setenv('FIBOSMS_JOURNAL', 'delete')
        client = make_client()
    assert client.get('/?guid=g-1&phone=0912345678').body == DONE
    assert journal_mode(db) == 'delete'


@pytest.mark.parametrize('how', ['make_app', 'environ'])
def test_invalid_journal_answers_try_again(make_client, db, how):
    """A journal mode SQLite should not be given answers "try again", one log line."""
    if how == 'make_app':
        client = make_client(journal='memory')
    else:
        client = make_client(extra_environ={'FIBOSMS_JOURNAL': 'bogus'})
    res = client.get('/?guid=g-1&phone=0912345678', status=200, expect_errors=True)
    assert res.body == RETRY
    assert len(res.errors.splitlines()) == 1
    assert 'journal mode' in res.errors


# -- Permissions ------------------------------------------------------------------------------

def test_new_directory_is_0700(client, db):
    """The directory the receiver creates for the database is private to its user."""
    client.get('/?guid=g-1&phone=0912345678')
    assert mode(os.path.dirname(db)) == 0o700


def test_new_file_is_0600(client, db):
    """The database file the receiver creates is private to its user."""
    client.get('/?guid=g-1&phone=0912345678')
    assert mode(db) == 0o600


@pytest.mark.parametrize('journal, sidecars', [
    ('wal', ['-wal', '-shm']),
    ('delete', ['-journal']),
])
def test_sidecar_files_are_0600(db, journal, sidecars):
    """While a connection writes, the -wal/-shm or -journal files are 0600 as well."""
    conn = storage.connect(db, journal)
    try:
        storage.deliver(conn, push())
        conn.execute('BEGIN IMMEDIATE')
        conn.execute('UPDATE messages SET deliveries = deliveries + 1')
        modes = {s: mode(db + s) for s in sidecars}
        conn.execute('ROLLBACK')
    finally:
        conn.close()
    assert modes == {s: 0o600 for s in sidecars}


# -- The default path -------------------------------------------------------------------------

def test_default_database_is_in_the_home_data_folder(tmp_path):
    """With no setting, the database is $HOME/fibosms-data/messages.sqlite3, beside the
    settings file."""
    home = tmp_path / 'home'
    home.mkdir()
    out = subprocess.run(
        [sys.executable, '-c', 'import receiver; print(receiver.read_settings()["FIBOSMS_DB"])'],
        cwd=ROOT, env=clean_env(HOME=str(home)), stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().strip() == str(home / 'fibosms-data' / 'messages.sqlite3')


def test_cgi_push_without_setting_goes_to_home(tmp_path):
    """A CGI push with no setting is stored under $HOME/fibosms-data and nothing in the cwd."""
    home, cwd = tmp_path / 'home', tmp_path / 'www'
    home.mkdir()
    cwd.mkdir()
    env = clean_env(HOME=str(home), GATEWAY_INTERFACE='CGI/1.1', REQUEST_METHOD='GET',
                    QUERY_STRING='guid=g-home&phone=0912345678&message=hi', PATH_INFO='/',
                    REMOTE_ADDR='127.0.0.1', SERVER_NAME='localhost', SERVER_PORT='80',
                    SERVER_PROTOCOL='HTTP/1.1')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'receiver.py')], cwd=str(cwd),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert out.stdout.endswith(DONE), out.stderr
    db = str(home / 'fibosms-data' / 'messages.sqlite3')
    assert [r['guid'] for r in rows(db)] == ['g-home']
    assert os.listdir(str(cwd)) == []


# -- Waiting for another writer, and import time ----------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute('BEGIN IMMEDIATE')
print('locked', flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_busy_database_answers_try_again_after_the_timeout(client, db):
    """A writer holding the lock past the busy timeout makes a push answer "try again" in about 5 s."""
    client.get('/?guid=g-0&phone=0912345678')
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, db, '20'],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b'locked'
        start = time.monotonic()
        res = client.get('/?guid=g-1&phone=0912345678', status=200, expect_errors=True)
        elapsed = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert res.body == RETRY
    assert 'locked' in res.errors
    assert storage.BUSY_TIMEOUT - 0.5 <= elapsed <= storage.BUSY_TIMEOUT + 3
    assert [r['guid'] for r in rows(db)] == ['g-0']


def test_import_opens_no_database(tmp_path):
    """Importing receiver creates neither the configured database nor the default one."""
    db = tmp_path / 'data' / 'messages.sqlite3'
    home = tmp_path / 'home'
    home.mkdir()
    subprocess.run([sys.executable, '-c', 'import receiver'], cwd=ROOT, check=True,
                   env=clean_env(FIBOSMS_DB=str(db), HOME=str(home)))
    assert not db.parent.exists()
    assert os.listdir(str(home)) == []


def test_version_1_database_gets_the_phone_index_and_keeps_its_rows(db, client, make_client):
    """A database of schema 1 (before the inbox) is brought to 2 when it is next opened (the
    code's upgrade restarts a server): the index of one phone's messages is made, the rows
    stay."""
    assert client.get('/?guid=g-1&phone=0912345678&message=hi').body == DONE
    conn = sqlite3.connect(db)
    conn.execute('DROP INDEX messages_phone')
    conn.execute('PRAGMA user_version = 1')
    conn.commit()
    conn.close()
    assert make_client().get('/?guid=g-2&phone=0912345678&message=hi').body == DONE
    conn = sqlite3.connect(db)
    try:
        assert conn.execute('PRAGMA user_version').fetchone()[0] == 2
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                            " AND tbl_name = 'messages'")]
        assert 'messages_phone' in names
    finally:
        conn.close()
    assert [r['guid'] for r in rows(db)] == ['g-1', 'g-2']

"""Attacks on the database's place: another local user plants the file, a link or a folder
where the receiver will write, or hopes for one it makes open to all. Each is refused with
"try again" (200 <Status>1</Status>) and one log line naming the place; nothing is written
through it."""
import os
import pwd
import stat

import pytest

from conftest import DONE, RETRY, rows

PUSH = '/?guid=place-1&phone=0912345678&message=Xin+chao'
NOBODY = pwd.getpwnam('nobody')


def refused(make_client, db, reason):
    """Push once to `db`: "try again" (200 <Status>1</Status>) and one log line holding `reason` (which
    names the place) and neither the phone nor the text."""
    res = make_client(db=db).get(PUSH, status=200, expect_errors=True)
    assert res.body == RETRY
    [line] = res.errors.splitlines()
    assert reason in line, line
    assert '0912345678' not in line and 'Xin' not in line
    return line


def test_file_planted_in_a_folder_open_to_all_is_refused(tmp_path, make_client):
    """A database file planted in a world-writable folder (a /tmp) is never written into."""
    folder = tmp_path / 'shared'
    folder.mkdir()
    os.chmod(str(folder), 0o1777)
    planted = folder / 'messages.sqlite3'
    planted.write_bytes(b'')
    os.chown(str(planted), NOBODY.pw_uid, NOBODY.pw_gid)
    refused(make_client, str(planted), 'is open to group or others (mode 1777)')
    assert planted.read_bytes() == b''
    assert os.listdir(str(folder)) == ['messages.sqlite3']


@pytest.mark.parametrize('mode', [0o750, 0o705, 0o701, 0o770])
def test_own_folder_open_to_group_or_others_is_refused(tmp_path, make_client, mode):
    """The folder must be closed to group and others: its -wal and -shm files live there."""
    folder = tmp_path / 'data'
    folder.mkdir()
    os.chmod(str(folder), mode)
    refused(make_client, str(folder / 'messages.sqlite3'),
            '%s is open to group or others (mode %o): chmod 700 it' % (folder, mode))
    assert os.listdir(str(folder)) == []


@pytest.mark.parametrize('mode', [0o640, 0o604, 0o660, 0o606])
def test_own_file_open_to_group_or_others_is_refused(db, client, make_client, mode):
    """An existing database that others may read is refused until it is chmod 600 again."""
    assert client.get(PUSH).body == DONE
    os.chmod(db, mode)
    refused(make_client, db, 'chmod 600 it')
    os.chmod(db, 0o600)
    assert make_client().get(PUSH).body == DONE
    assert [r['deliveries'] for r in rows(db)] == [2]


def test_symlink_to_another_file_is_refused(tmp_path, make_client):
    """A link at the database's name is not followed: the file it points to stays as it is."""
    folder = tmp_path / 'data'
    folder.mkdir(mode=0o700)
    target = tmp_path / 'victim.txt'
    target.write_bytes(b'important\n')
    os.symlink(str(target), str(folder / 'messages.sqlite3'))
    refused(make_client, str(folder / 'messages.sqlite3'), 'is a symbolic link')
    assert target.read_bytes() == b'important\n'


def test_dangling_symlink_is_not_followed_to_create_a_file(tmp_path, make_client):
    """A link planted where the file will be made must not make the file where it points."""
    folder = tmp_path / 'data'
    folder.mkdir(mode=0o700)
    target = tmp_path / 'made-by-the-receiver'
    os.symlink(str(target), str(folder / 'messages.sqlite3'))
    refused(make_client, str(folder / 'messages.sqlite3'), 'is a symbolic link')
    assert not os.path.lexists(str(target))


def test_symlinked_folder_is_followed_to_a_safe_one(tmp_path, make_client):
    """A folder reached through a link (systemd's DynamicUser does that) is checked where it
    really is, and the database opened there."""
    real = tmp_path / 'private' / 'data'
    real.parent.mkdir(mode=0o700)
    real.mkdir(mode=0o700)
    os.symlink(str(real), str(tmp_path / 'data'))
    assert make_client(db=str(tmp_path / 'data' / 'messages.sqlite3')).get(PUSH).body == DONE
    assert len(rows(str(real / 'messages.sqlite3'))) == 1


def test_symlinked_folder_to_an_unsafe_one_is_refused(tmp_path, make_client):
    """A link to a folder open to others is refused there."""
    real = tmp_path / 'elsewhere'
    real.mkdir()
    os.chmod(str(real), 0o777)
    os.symlink(str(real), str(tmp_path / 'data'))
    refused(make_client, str(tmp_path / 'data' / 'messages.sqlite3'),
            'folder %s is open to group or others' % real)
    assert os.listdir(str(real)) == []


@pytest.mark.parametrize('owner, mode, reason', [
    ('nobody', 0o755, 'belongs to uid %d, who could move' % NOBODY.pw_uid),
    ('root', 0o775, 'writable by group or others (mode 775)'),
    ('root', 0o757, 'writable by group or others (mode 757)'),
])
def test_folder_above_that_another_user_controls_is_refused(tmp_path, make_client,
                                                             owner, mode, reason):
    """Whoever may write a folder above the database's can swap the database's folder for
    theirs between the checks and the open: refused, the folder's name in the log line."""
    above = tmp_path / 'above'
    above.mkdir()
    (above / 'data').mkdir(mode=0o700)
    os.chmod(str(above), mode)
    if owner == 'nobody':
        os.chown(str(above), NOBODY.pw_uid, NOBODY.pw_gid)
    line = refused(make_client, str(above / 'data' / 'messages.sqlite3'), reason)
    assert 'folder %s above the data' % above in line
    assert os.listdir(str(above / 'data')) == []


def test_sticky_folder_above_is_allowed(tmp_path, make_client):
    """A sticky folder open to all (as /tmp) lets no one move another's folder: allowed."""
    above = tmp_path / 'tmp'
    above.mkdir()
    os.chmod(str(above), 0o1777)
    assert make_client(db=str(above / 'data' / 'messages.sqlite3')).get(PUSH).body == DONE


def links_in_a_sticky_folder(tmp_path, owners):
    """A sticky folder open to all (a /tmp) holding a chain of links, link-0 -> link-1 -> ...
    -> a private data folder, link i owned by owners[i]: the path through link-0."""
    sticky, real = tmp_path / 'tmp', tmp_path / 'private' / 'data'
    sticky.mkdir()
    os.chmod(str(sticky), 0o1777)
    real.parent.mkdir(mode=0o700)
    real.mkdir(mode=0o700)
    names = ['link-%d' % i for i in range(len(owners))]
    for name, target, owner in zip(names, names[1:] + [str(real)], owners):
        os.symlink(target, str(sticky / name))
        if owner == 'nobody':
            os.lchown(str(sticky / name), NOBODY.pw_uid, NOBODY.pw_gid)
    return str(sticky / names[0] / 'messages.sqlite3'), real


@pytest.mark.parametrize('owners, bad', [
    (['nobody'], 'link-0'),                 # the link itself
    (['root', 'nobody'], 'link-1'),         # a link it points to
    (['root', 'root', 'nobody'], 'link-2'),
])
def test_link_another_user_owns_on_the_way_is_refused(tmp_path, make_client, owners, bad):
    """A link on the database's path, or on the way of a link it points to, that another
    user owns (in a sticky folder, where links of all users live) could be re-pointed
    between two pushes, splitting the messages over two folders: refused, naming it."""
    path, real = links_in_a_sticky_folder(tmp_path, owners)
    line = refused(make_client, path, 'belongs to uid %d' % NOBODY.pw_uid)
    assert 'the link %s ' % (tmp_path / 'tmp' / bad) in line
    assert os.listdir(str(real)) == []


def test_own_link_in_a_folder_others_may_write_is_refused(tmp_path, make_client):
    """A link of the receiver's own, in a folder where others may write (not sticky), can be
    replaced by another user's: refused, naming that folder."""
    shared, real = tmp_path / 'shared', tmp_path / 'private' / 'data'
    shared.mkdir()
    os.chmod(str(shared), 0o777)
    real.parent.mkdir(mode=0o700)
    real.mkdir(mode=0o700)
    os.symlink(str(real), str(shared / 'data'))
    line = refused(make_client, str(shared / 'data' / 'messages.sqlite3'),
                   'writable by group or others (mode 777)')
    assert 'the folder %s above the data' % shared in line
    assert os.listdir(str(real)) == []


def test_own_links_in_a_sticky_folder_are_followed(tmp_path, make_client):
    """Links of the receiver's own user (or root's) are followed to the data."""
    path, real = links_in_a_sticky_folder(tmp_path, ['root', 'root'])
    assert make_client(db=path).get(PUSH).body == DONE
    assert len(rows(str(real / 'messages.sqlite3'))) == 1


def test_device_file_is_refused(tmp_path, make_client):
    """A database path that is a device (a fifo, here) is not a regular file: refused."""
    folder = tmp_path / 'data'
    folder.mkdir(mode=0o700)
    os.mkfifo(str(folder / 'messages.sqlite3'), 0o600)
    refused(make_client, str(folder / 'messages.sqlite3'), 'is not a regular file')


def test_file_of_another_user_is_refused(db, client, make_client):
    """A database that belongs to another user is theirs to change: refused."""
    assert client.get(PUSH).body == DONE
    os.chown(db, NOBODY.pw_uid, NOBODY.pw_gid)
    refused(make_client, db, 'belongs to uid %d, not to this user' % NOBODY.pw_uid)


def test_device_file_is_refused_and_nothing_made_beside_it(make_client):
    """FIBOSMS_DB=/dev/null: not a regular file, and no -journal file appears in /dev."""
    before = set(os.listdir('/dev'))
    refused(make_client, '/dev/null', 'the folder /dev is open to group or others')
    assert set(os.listdir('/dev')) - before == set()


def test_folders_made_are_0700_whatever_the_umask(tmp_path, make_client):
    """Every folder made for the database is 0700, not only the last, even under umask 000."""
    db = tmp_path / 'a' / 'b' / 'c' / 'messages.sqlite3'
    old = os.umask(0)
    try:
        assert make_client(db=str(db)).get(PUSH).body == DONE
    finally:
        os.umask(old)
    for folder in (db.parent, db.parent.parent, db.parent.parent.parent):
        assert stat.S_IMODE(os.stat(str(folder)).st_mode) == 0o700, folder
    assert stat.S_IMODE(os.stat(str(db)).st_mode) == 0o600

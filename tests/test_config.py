"""Settings: make_app's arguments, then the settings file, then the WSGI environ (SetEnv),
then os.environ; the data folder; the receiver's own log."""
import os
import subprocess
import sys

import pytest

import ownerlog
import receiver
from conftest import DONE, RETRY, ROOT, TestApp, rows, write_settings

PUSH = '/?guid=g&phone=1&message=hi'
SECRET = 'a-secret-of-the-file-77'


def test_wsgi_environ_setting_beats_os_environ(make_client, tmp_path, monkeypatch):
    """FIBOSMS_DB from the request's environ (Apache SetEnv) wins over the process's."""
    from_environ, from_process = str(tmp_path / 'a.sqlite3'), str(tmp_path / 'b.sqlite3')
    monkeypatch.setenv('FIBOSMS_DB', from_process)
    client = make_client(db=None, extra_environ={'FIBOSMS_DB': from_environ})
    assert client.get(PUSH).body == DONE
    assert len(rows(from_environ)) == 1 and rows(from_process) == []


def test_os_environ_setting_is_used_when_the_wsgi_environ_has_none(make_client, tmp_path,
                                                                    monkeypatch):
    """Without SetEnv, the process environment gives the setting."""
    from_process = str(tmp_path / 'b.sqlite3')
    monkeypatch.setenv('FIBOSMS_DB', from_process)
    assert make_client(db=None).get(PUSH).body == DONE
    assert len(rows(from_process)) == 1


def test_make_app_argument_beats_both_environments(make_client, db, tmp_path, monkeypatch):
    """make_app(db=...) configures without environment variables (suEXEC strips them)."""
    other = str(tmp_path / 'other.sqlite3')
    monkeypatch.setenv('FIBOSMS_DB', other)
    client = make_client(extra_environ={'FIBOSMS_DB': other})
    assert client.get(PUSH).body == DONE
    assert len(rows(db)) == 1 and rows(other) == []


def test_token_from_the_wsgi_environ_is_enforced(make_client, db):
    """FIBOSMS_TOKEN given by SetEnv guards the page."""
    client = make_client(extra_environ={'FIBOSMS_TOKEN': 'abc-set-by-SetEnv'})
    client.get(PUSH, status=403, expect_errors=True)
    assert client.get('/abc-set-by-SetEnv' + PUSH[1:]).body == DONE


@pytest.mark.parametrize('setting, value, reason', [
    ('allow', '203.0.113.0/24, not-a-network', "'not-a-network' is not an address"),
    ('journal', 'sideways', 'journal mode'),
])
def test_bad_setting_answers_try_again_with_one_log_line(make_client, db, setting, value,
                                                         reason):
    """A setting that cannot be used is one clear log line and 200 <Status>1</Status> (a
    retry helps once it is mended), never a crash."""
    res = make_client(**{setting: value}).get(PUSH, expect_errors=True)
    assert (res.status_int, res.body) == (200, RETRY)
    assert res.errors.count('\n') == 1 and reason in res.errors
    assert rows(db) == []


# -- The settings file ------------------------------------------------------------------------

def test_settings_file_in_the_default_data_folder_is_read(make_client, db):
    """~/fibosms-data/settings.env sets the secret, with no other setting anywhere; the
    database is beside it."""
    write_settings(db, '# a comment', '', 'FIBOSMS_TOKEN=' + SECRET)
    client = make_client(db=None)
    client.get(PUSH, status=403, expect_errors=True)
    assert client.get('/' + SECRET + PUSH[1:]).body == DONE
    assert len(rows(db)) == 1


def test_settings_file_beats_setenv_and_the_environment(make_client, db, monkeypatch):
    """A name the file sets is the file's, whatever SetEnv or the environment say; the ones it
    does not set still come from them (today's variables keep working)."""
    write_settings(db, 'FIBOSMS_TOKEN=' + SECRET)
    monkeypatch.setenv('FIBOSMS_TOKEN', 'the-environments-secret')
    client = make_client(db=None, extra_environ={'FIBOSMS_TOKEN': 'the-setenv-secret-1',
                                                 'FIBOSMS_ALLOW': '203.0.113.9'})
    for other in ('the-environments-secret', 'the-setenv-secret-1'):
        client.get('/%s%s' % (other, PUSH[1:]), status=403, expect_errors=True)
    res = client.get('/' + SECRET + PUSH[1:], status=403, expect_errors=True)
    assert "address '127.0.0.1' not allowed" in res.errors    # FIBOSMS_ALLOW from SetEnv


def test_make_app_arguments_beat_the_settings_file(make_client, db):
    """receiver.cgi's constants of earlier versions (make_app's arguments) still hold."""
    write_settings(db, 'FIBOSMS_TOKEN=' + SECRET)
    client = make_client(token='the-constant-secret')
    client.get('/' + SECRET + PUSH[1:], status=403, expect_errors=True)
    assert client.get('/the-constant-secret' + PUSH[1:]).body == DONE


def test_fibosms_config_names_the_file_and_the_data_folder(tmp_path):
    """FIBOSMS_CONFIG (make_app's config, SetEnv or the environment) names the settings file,
    and its folder holds the database and the log."""
    folder = tmp_path / 'elsewhere'
    config = write_settings(str(folder / 'x'), 'FIBOSMS_TOKEN=' + SECRET)
    for client in (TestApp(receiver.make_app(config=config)),
                   TestApp(receiver.make_app(),
                                   extra_environ={'FIBOSMS_CONFIG': config})):
        client.get(PUSH, status=403, expect_errors=True, extra_environ={
            'REMOTE_ADDR': '192.0.2.1'})
    assert rows(str(folder / 'messages.sqlite3')) == []
    assert (folder / 'receiver.log').read_text().count('wrong or missing token') == 2


def test_a_named_settings_file_that_is_missing_answers_try_again(tmp_path):
    """FIBOSMS_CONFIG naming no file is a mistake: try again, and a line saying so."""
    app = TestApp(receiver.make_app(config=str(tmp_path / 'none.env')))
    res = app.get(PUSH, expect_errors=True, extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    assert (res.status_int, res.body) == (200, RETRY)
    assert 'the settings file %s (FIBOSMS_CONFIG) does not exist' % (
        tmp_path / 'none.env') in res.errors


@pytest.mark.parametrize('spoil, reason', [
    (lambda path: os.chmod(path, 0o644), 'is open to group or others (mode 644)'),
    (lambda path: os.chmod(os.path.dirname(path), 0o755), 'is open to group or others (mode 755)'),
    (lambda path: os.chown(path, 65534, 65534), 'belongs to uid 65534'),
    (lambda path: (os.rename(path, path + '.real'), os.symlink(path + '.real', path)),
     'cannot be read'),
])
def test_a_settings_file_others_could_read_or_change_is_refused(make_client, db, spoil,
                                                                 reason):
    """The file holds the secret: one open to others, not the user's own, in a folder others
    may enter, or a link is refused (try again, a line naming it), as the database is."""
    if os.geteuid() != 0 and 'uid' in reason:
        pytest.skip('needs root, to give the file away')
    path = write_settings(db, 'FIBOSMS_TOKEN=' + SECRET)
    spoil(path)
    res = make_client(db=None).get('/' + SECRET + PUSH[1:], expect_errors=True)
    assert (res.status_int, res.body) == (200, RETRY)
    assert reason in res.errors, res.errors
    assert rows(db) == []


def test_settings_file_lines_as_systemd_reads_them(make_client, db):
    """Quotes around a value are taken off, a UTF-8 BOM (Notepad) is ignored, and a line that
    is not FIBOSMS_NAME=value is skipped (check names it: test_operator)."""
    write_settings(db, '\ufeffFIBOSMS_TOKEN="%s"' % SECRET, 'this line is a mistake',
                   'export FIBOSMS_ALLOW=203.0.113.9')
    path = os.path.join(os.path.dirname(db), 'settings.env')
    values, problems = receiver.read_settings_file(path, True)
    assert values == {'FIBOSMS_TOKEN': SECRET}
    assert [number for number, _ in problems] == [2, 3]
    assert make_client(db=None).get('/' + SECRET + PUSH[1:]).body == DONE


def test_a_settings_file_that_is_not_utf8_answers_try_again(make_client, db):
    """A file saved in another encoding is refused, not read wrong."""
    path = write_settings(db)
    with open(path, 'wb') as f:
        f.write(b'FIBOSMS_TOKEN=kh\xf3a-b\xed-m\xe2t-1234\n')
    res = make_client(db=None).get(PUSH, expect_errors=True)
    assert (res.status_int, res.body) == (200, RETRY)
    assert 'is not UTF-8 text' in res.errors


def test_a_change_to_the_settings_file_counts_from_the_next_push(make_client, db):
    """A long-running server reads the file at every push: no restart needed."""
    write_settings(db, 'FIBOSMS_TOKEN=' + SECRET)
    client = make_client(db=None)
    assert client.get('/' + SECRET + PUSH[1:]).body == DONE
    write_settings(db, 'FIBOSMS_TOKEN=a-new-secret-of-the-file')
    client.get('/' + SECRET + '/?guid=h&phone=1', status=403, expect_errors=True)
    assert client.get('/a-new-secret-of-the-file/?guid=h&phone=1').body == DONE


def test_legacy_default_folder_is_kept_where_it_holds_the_database(tmp_path):
    """A set-up of the versions before the settings file, whose messages are in
    ~/.fibosms/messages.sqlite3, goes on storing there while ~/fibosms-data does not exist."""
    legacy = tmp_path / '.fibosms'
    app = TestApp(receiver.make_app(db=str(legacy / 'messages.sqlite3')),
                          extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    assert app.get(PUSH).body == DONE
    assert receiver.config_path()[0] == str(legacy / 'settings.env')
    app = TestApp(receiver.make_app(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    assert app.get('/?guid=h&phone=1').body == DONE
    assert [r['guid'] for r in rows(str(legacy / 'messages.sqlite3'))] == ['g', 'h']
    (tmp_path / 'fibosms-data').mkdir(mode=0o700)
    assert receiver.config_path()[0] == str(tmp_path / 'fibosms-data' / 'settings.env')


# -- The receiver's own log -------------------------------------------------------------------

def test_each_reason_goes_to_the_log_in_the_data_folder_too(make_client, db, tmp_path):
    """The one-line reasons reach receiver.log in the data folder (mode 600), stamped, where
    a shared-hosting owner reads them; the names are the settings file's."""
    write_settings(db, 'FIBOSMS_TOKEN=change-me-to-a-long-random-secret')
    make_client(db=None).get(PUSH, expect_errors=True)
    log = tmp_path / 'fibosms-data' / 'receiver.log'
    [line] = log.read_text().splitlines()
    assert line.endswith('answered 1 (HTTP 200): configuration: FIBOSMS_TOKEN is still the'
                         ' example value; set it to a long random secret')
    assert line[:4].isdigit() and line[19] == 'Z'
    assert os.stat(str(log)).st_mode & 0o777 == 0o600


def test_the_log_is_rotated_at_its_bound(make_client, db, tmp_path, monkeypatch):
    """receiver.log over MAX_LOG bytes becomes receiver.log.1 (the one before is dropped):
    the log never grows past twice its bound."""
    monkeypatch.setattr(ownerlog, 'MAX_LOG', 400)
    os.makedirs(os.path.dirname(db), mode=0o700)
    client = make_client(token='a-long-enough-secret')
    for n in range(40):
        client.get('/wrong/?guid=g%d&phone=1' % n, status=403, expect_errors=True)
    log = tmp_path / 'fibosms-data' / 'receiver.log'
    sizes = [os.path.getsize(str(log)), os.path.getsize(str(log) + '.1')]
    assert all(0 < size <= 400 + 100 for size in sizes), sizes


def test_a_planted_link_as_the_log_is_not_followed(make_client, db, tmp_path):
    """Another local user's link at receiver.log's name is never written through."""
    target = tmp_path / 'victim'
    target.write_text('')
    os.makedirs(os.path.dirname(db), mode=0o700)
    os.symlink(str(target), os.path.join(os.path.dirname(db), 'receiver.log'))
    make_client(token='a-long-enough-secret').get(PUSH, status=403, expect_errors=True)
    assert target.read_text() == ''


def run_python(code, **env):
    """Run `code` in a fresh interpreter without site-packages (-S), from the repository."""
    return subprocess.run([sys.executable, '-S', '-c', code], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          env=dict(os.environ, **env), check=True).stdout


def test_plain_cgi_push_imports_only_what_it_needs(tmp_path):
    """A CGI push with a secret and no allowlist or hook loads none of the modules only
    those need, and of the project's only receiver.py and storage.py."""
    code = '\n'.join([
        'import sys, wsgiref.util, receiver',
        'environ = {"QUERY_STRING": "guid=g&phone=1", "fibosms.ends": True,'
        ' "PATH_INFO": "/a-long-enough-secret", "REMOTE_ADDR": "192.0.2.1"}',
        'wsgiref.util.setup_testing_defaults(environ)',
        'body = receiver.application(environ, lambda status, headers: None)',
        'assert b"".join(body) == %r' % DONE,
        'print(" ".join(sorted(sys.modules)))',
    ])
    loaded = run_python(code, FIBOSMS_DB=str(tmp_path / 'm.sqlite3'),
                        FIBOSMS_TOKEN='a-long-enough-secret').split()
    for name in ('json', 'hmac', 'hashlib', 'ipaddress', 'threading', 'argparse',
                 'traceback', 'wsgiref.simple_server', 'urllib.parse', 'addresses', 'post',
                 'hooks', 'connections', 'forward', 'commands', 'smallserver'):
        assert name not in loaded


def test_settings_are_documented_in_one_table():
    """Every setting the code reads is in commands.SETTINGS, which check and README's table
    follow (test_readme)."""
    import re
    import commands
    names = set()
    for name in os.listdir(ROOT):
        if name.endswith('.py'):
            with open(os.path.join(ROOT, name), encoding='utf-8') as f:
                names |= set(re.findall(r'FIBOSMS_[A-Z_]*[A-Z]', f.read()))
    assert names - {'FIBOSMS_NAME'} <= set(commands.SETTINGS)


def test_each_environ_setting_is_honoured_by_one_app(tmp_path):
    """One app, requests with different FIBOSMS_DB in their environ (two Apache SetEnv
    blocks): each push lands in its own database, every time."""
    app = TestApp(receiver.make_app(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    dbs = [str(tmp_path / name / 'messages.sqlite3') for name in ('a', 'b')]
    for n in range(3):
        for db in dbs:
            res = app.get('/?guid=g-%d&phone=1' % n, extra_environ={'FIBOSMS_DB': db})
            assert res.body == DONE
    assert [[r['guid'] for r in rows(db)] for db in dbs] == [['g-0', 'g-1', 'g-2']] * 2

"""Settings: make_app's arguments, then the WSGI environ (SetEnv), then os.environ."""
import os
import subprocess
import sys

import pytest
import webtest

import receiver
from conftest import DONE, RETRY, ROOT, rows

PUSH = '/?guid=g&phone=1&message=hi'


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
def test_bad_setting_answers_503_with_one_log_line(make_client, db, setting, value, reason):
    """A setting that cannot be used is one clear log line and 503, never a crash."""
    res = make_client(**{setting: value}).get(PUSH, status=503, expect_errors=True)
    assert res.body == RETRY
    assert res.errors.count('\n') == 1 and reason in res.errors
    assert rows(db) == []


def run_python(code, **env):
    """Run `code` in a fresh interpreter without site-packages (-S), from the repository."""
    return subprocess.run([sys.executable, '-S', '-c', code], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          env=dict(os.environ, **env), check=True).stdout


def test_plain_cgi_push_imports_only_what_it_needs(tmp_path):
    """A CGI push without token, allowlist or hook loads none of the modules only they need."""
    code = '\n'.join([
        'import sys, wsgiref.util, receiver',
        'environ = {"QUERY_STRING": "guid=g&phone=1", "wsgi.run_once": True,'
        ' "REMOTE_ADDR": "127.0.0.1"}',
        'wsgiref.util.setup_testing_defaults(environ)',
        'body = receiver.application(environ, lambda status, headers: None)',
        'assert b"".join(body) == %r' % DONE,
        'print(" ".join(sorted(sys.modules)))',
    ])
    loaded = run_python(code, FIBOSMS_DB=str(tmp_path / 'm.sqlite3')).split()
    for name in ('json', 'hmac', 'hashlib', 'ipaddress', 'threading', 'argparse',
                 'traceback', 'wsgiref.simple_server', 'urllib.parse'):
        assert name not in loaded


def test_settings_are_documented_in_the_module_docstring():
    """Every setting the app reads is named in receiver.py's docstring."""
    for variable in receiver.SETTINGS.values():
        assert variable in receiver.__doc__


def test_each_environ_setting_is_honoured_by_one_app(tmp_path):
    """One app, requests with different FIBOSMS_DB in their environ (two Apache SetEnv
    blocks): each push lands in its own database, every time."""
    app = webtest.TestApp(receiver.make_app(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    dbs = [str(tmp_path / name / 'messages.sqlite3') for name in ('a', 'b')]
    for n in range(3):
        for db in dbs:
            res = app.get('/?guid=g-%d&phone=1' % n, extra_environ={'FIBOSMS_DB': db})
            assert res.body == DONE
    assert [[r['guid'] for r in rows(db)] for db in dbs] == [['g-0', 'g-1', 'g-2']] * 2
